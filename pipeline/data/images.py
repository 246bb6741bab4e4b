"""The images of one split, read on demand: the one input path of every stage.

An :class:`ImageSet` is N images at the model's input shape. Whatever part of it
a stage reads comes out as float32 NHWC in [0, 1]:

* ``x[i]``, ``x[a:b]``, ``x[index_array]``: a numpy array of those images only;
* ``x.batches(batch_size, order)``: an iterator of batches (training, prediction);
* ``x.subset(idx)``, ``x.shard(i, n)``: another ImageSet over some of the images,
  nothing read.

Two sources stand behind it:

* memory: an array made by a built-in data set (``shapes``, ``digits``,
  ``fashion-mnist``: small images, generated or read whole);
* the decoded-image cache (:mod:`pipeline.data.cache`): uint8 chunk files on disk,
  each image read with one ``pread`` when it is needed. Not memory-mapped: mapped
  pages that were read stay counted in the process's resident memory, so a pass over
  40,000 photos would grow it by their size; a read does not.

So no stage holds a whole split of photos in memory; at most a batch.
"""

import hashlib
import os
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

Index = Union[int, slice, Sequence[int], np.ndarray]


class ChunkFile:
    """One chunk of the decoded-image cache: a ``.npy`` file of uint8 NHWC images."""

    def __init__(self, path: str, offset: int, count: int, shape: Tuple[int, int, int]):
        self.path, self.offset, self.count, self.shape = path, offset, count, shape
        self.row_bytes = int(np.prod(shape))

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Reads image ``rows[k]`` of the chunk into ``out[k]`` (uint8)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, r in enumerate(rows):
                data = os.pread(fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
                if len(data) != self.row_bytes:
                    raise OSError(f"image cache file {self.path} is shorter than recorded "
                                  f"(row {int(r)} of {self.count})")
                out[k] = np.frombuffer(data, np.uint8).reshape(self.shape)
        finally:
            os.close(fd)


class ImageSet:
    """N images of one shape, from memory or from the decoded-image cache.

    Build with :meth:`from_array` or :meth:`from_chunks`; reading gives float32 in [0, 1].
    """

    def __init__(self, shape: Tuple[int, int, int], *, array: Optional[np.ndarray] = None,
                 chunks: Optional[List[ChunkFile]] = None, refs: Optional[np.ndarray] = None,
                 keys: Optional[Sequence[str]] = None):
        self.image_shape = tuple(int(v) for v in shape)
        self._array = array
        self._chunks = chunks
        self._refs = refs  # (n, 2) int64: chunk number, row in chunk
        self._keys = list(keys) if keys is not None else None  # content hash per image
        if array is None and (chunks is None or refs is None or keys is None):
            raise ValueError("ImageSet needs an array, or chunks with refs and keys")

    @classmethod
    def from_array(cls, x: np.ndarray) -> "ImageSet":
        """Images held in memory (float32 in [0, 1], or uint8 scaled by 1/255 when read)."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"expected NHWC images, got shape {x.shape}")
        if x.dtype != np.uint8:
            x = np.ascontiguousarray(x, np.float32)
        return cls(x.shape[1:], array=x)

    @classmethod
    def from_chunks(cls, shape, chunks: List[ChunkFile], refs: np.ndarray, keys: Sequence[str]) -> "ImageSet":
        """Images in cache chunk files: image i is row ``refs[i, 1]`` of ``chunks[refs[i, 0]]``,
        with content hash ``keys[i]``."""
        return cls(shape, chunks=chunks, refs=np.asarray(refs, np.int64).reshape(-1, 2), keys=keys)

    # Array-like surface -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._array) if self._array is not None else len(self._refs)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def in_memory(self) -> bool:
        return self._array is not None

    def __getitem__(self, key) -> np.ndarray:
        """Reads images: ``x[i]``, ``x[a:b]``, ``x[idx]``; a tuple's first item picks the
        images and the rest index into them (``x[:, 2:30, 2:30]``), numpy style."""
        if isinstance(key, tuple):
            if key and key[0] is Ellipsis:
                return np.asarray(self)[key]
            return self[key[0]][(slice(None),) * (not isinstance(key[0], (int, np.integer))) + key[1:]]
        if key is Ellipsis:
            return np.asarray(self)
        if isinstance(key, (int, np.integer)):
            return self[np.array([int(key)])][0]
        idx = self._positions(key)
        return self._read(idx)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches(256):
            yield from batch

    def __array__(self, dtype=None, copy=None):  # numpy interop; reads everything
        x = self._read(np.arange(len(self)))
        return x if dtype is None else x.astype(dtype)

    def tobytes(self) -> bytes:
        """The float32 bytes of every image (reads them all: for small sets and tests)."""
        return np.asarray(self).tobytes()

    def _positions(self, key: Index) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            return np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(idx < 0, idx + n, idx)

    def uint8(self, key: Index) -> np.ndarray:
        """Images ``key`` as stored, uint8 (cache) or float32 (memory, not rescaled)."""
        idx = self._positions(key)
        if self._array is not None:
            return self._array[idx]
        out = np.empty((len(idx), *self.image_shape), np.uint8)
        if not len(idx):
            return out
        refs = self._refs[idx]
        for c in np.unique(refs[:, 0]):
            where = np.flatnonzero(refs[:, 0] == c)
            block = np.empty((len(where), *self.image_shape), np.uint8)
            self._chunks[int(c)].read_rows(refs[where, 1], block)
            out[where] = block
        return out

    def _read(self, idx: np.ndarray) -> np.ndarray:
        x = self.uint8(idx)
        if x.dtype == np.uint8:
            return x.astype(np.float32) * np.float32(1 / 255)
        return x

    # Views ----------------------------------------------------------------------------
    def subset(self, idx: Index) -> "ImageSet":
        """The images at ``idx`` (in that order), nothing read."""
        pos = self._positions(idx)
        if self._array is not None:
            return ImageSet.from_array(self._array[pos])
        return ImageSet.from_chunks(self.image_shape, self._chunks, self._refs[pos],
                                    [self._keys[int(i)] for i in pos])

    def shard(self, index: int, count: int) -> "ImageSet":
        """Every ``count``-th image from ``index``: worker ``index`` of ``count`` reads only these."""
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count}")
        return self.subset(np.arange(index, len(self), count))

    def batches(self, batch_size: int, order: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
        """float32 batches of the images in ``order`` (default: stored order)."""
        order = np.arange(len(self)) if order is None else np.asarray(order, np.int64)
        for s in range(0, len(order), batch_size):
            yield self._read(order[s:s + batch_size])

    # Identity -------------------------------------------------------------------------
    def update_hash(self, h: "hashlib._Hash", name: str) -> None:
        """Feeds the images' identity into ``h``: the array's bytes (memory), or the content
        hash of every image and the shape (cache; the cache key holds the decode settings)."""
        if self._array is not None:
            arr = np.ascontiguousarray(self._array)
            h.update(f"{name}{arr.dtype}{arr.shape}".encode())
            h.update(arr.tobytes())
            return
        h.update(f"{name}uint8{self.shape}".encode())
        h.update("\n".join(self._keys).encode())


def as_image_set(x) -> ImageSet:
    """``x`` if it is an ImageSet, else an in-memory one over the array ``x`` (NHWC)."""
    return x if isinstance(x, ImageSet) else ImageSet.from_array(np.asarray(x))
