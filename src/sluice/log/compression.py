"""Compression of batch payloads with the codecs of the format (none, zstd, lz4).

zstd contexts are kept per thread, as they are not thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any

from sluice.errors import ConfigError
from sluice.log.batch_layout import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, CODECS

_local = threading.local()


def _zstd() -> tuple[Any, Any]:
    pair = getattr(_local, "zstd", None)
    if pair is None:
        import zstandard

        pair = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
        _local.zstd = pair
    return pair


def compress(codec: int, data: Any) -> Any:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_ZSTD:
        return _zstd()[0].compress(data)
    if codec == CODEC_LZ4:
        import lz4.block

        return lz4.block.compress(data, store_size=False)
    raise ConfigError(f"unknown compression codec {codec}")


def decompress(codec: int, data: Any, size: int) -> Any:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_ZSTD:
        return _zstd()[1].decompress(data, max_output_size=size)
    if codec == CODEC_LZ4:
        import lz4.block

        return lz4.block.decompress(data, uncompressed_size=size)
    raise ValueError(f"unknown compression codec {codec}")


def codec_id(name: str) -> int:
    """The codec number of ``"none"``, ``"zstd"`` or ``"lz4"``.

    >>> codec_id("zstd")
    4
    """
    try:
        return CODECS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown compression {name!r}; use 'none', 'zstd' or 'lz4'") from None


__all__ = ["codec_id", "compress", "decompress"]
