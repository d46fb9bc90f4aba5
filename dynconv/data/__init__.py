"""Data: dataset sources, the decode-once cache, sharded batches, batched augmentation, channel subsets.

Modules (import them directly; this package imports nothing heavy, so decode workers start fast):

* :mod:`dynconv.data.sources` - layouts (ImageNet-mini txt lists, class folders) and their validation
* :mod:`dynconv.data.cache` - ``prepare()``: decode once into memory-mapped uint8 arrays
* :mod:`dynconv.data.cache_files` - a cache directory on disk: format, ``PreparedData``, locks, atomic writes
* :mod:`dynconv.data.decode` - one image file to a uint8 RGB array (EXIF, modes, resize), the decode pool
* :mod:`dynconv.data.loader` - ``ShardedBatches``: per-rank, per-epoch shuffled uint8 batches
* :mod:`dynconv.data.augment` - ``normalize()`` and ``BatchAugment(strength)`` on the training device
* :mod:`dynconv.data.channels` - the seven channel subsets, selection, zero-filling, channel drop
* :mod:`dynconv.data.synth` - the embedded synthetic dataset (``write_synthetic``, ``ensure_synthetic``)

Nothing here downloads data.
"""
