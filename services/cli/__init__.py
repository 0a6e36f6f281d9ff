"""The `sarathi-serve` command line."""
