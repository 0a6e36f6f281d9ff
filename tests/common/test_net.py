import random
import socket
from pathlib import Path

from services.common.net import PortPicker, port_free


def test_picker_never_repeats_a_port_and_stays_below_the_ephemeral_range():
    picker = PortPicker(rng=random.Random(0))
    ports = [picker.take() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10000 <= p < low for p in ports)


def test_picker_skips_a_port_in_use():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        assert not port_free("127.0.0.1", busy)

        class Fixed(random.Random):
            def __init__(self):
                super().__init__(0)
                self.first = True

            def randint(self, a, b):
                if self.first:
                    self.first = False
                    return busy
                return super().randint(a, b)

        picker = PortPicker(low=1024, high=65535, rng=Fixed())  # first draw: the busy one
        assert picker.take() != busy
