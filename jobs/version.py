"""The ldm-serve release this code is, as the installed package's metadata says."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def release() -> str:
    """`0.1.0`, say; `0+unknown` when run from a checkout that was never pip-installed."""
    try:
        return version("ldm-serve")
    except PackageNotFoundError:
        return "0+unknown"


VERSION = release()
BUILD_HELP = "The running ldm-serve release (as ldm_build_info{version} 1)."
