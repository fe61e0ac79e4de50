"""Sizes as people read them: one formatter for the store, errors, status and timings."""

import pytest

from distkernel.core.config import format_bytes


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 - 1, "1.0 MiB"),  # 1023.999 KiB would print as "1024.0 KiB"
        (2 * 1024**2, "2.0 MiB"),
        (int(3.25 * 1024**3), "3.2 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (2048 * 1024**4, "2048.0 TiB"),
        (1536.0, "1.5 KiB"),  # store sizes may be floats
    ],
)
def test_format_bytes(n, expected):
    assert format_bytes(n) == expected


def test_format_bytes_rejects_negative():
    with pytest.raises(ValueError, match="got -1"):
        format_bytes(-1)
