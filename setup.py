"""The package list, found rather than listed: `sarathi_serve` is `services/` (each
service a subpackage) and `sarathi_serve.bench` is `bench/`. Everything else about the
project is in pyproject.toml."""

from setuptools import find_packages, setup


def _packages(root: str, name: str) -> list[str]:
    return [name, *(f"{name}.{package}" for package in find_packages(root))]


setup(packages=_packages("services", "sarathi_serve") + _packages("bench", "sarathi_serve.bench"))
