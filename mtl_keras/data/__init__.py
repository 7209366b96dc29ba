"""Data: datasets as arrays (or lazily read files) and the tf.data pipelines that feed `model.fit`.

    types.py     DatasetInfo, Split, Splits (no TensorFlow)
    sources/     one module per dataset, found by name through `sources.get` (shapes, fashion_mnist, cifar, files)
    datasets.py  `prepare(DataConfig, seed)`: a source's splits + validation carve + training cap
    images.py    `fit_images` (the one place channels and size adapt), file decoding, `FileImages`
    headers.py   image size from a file's header: the decompression-bomb guard (no TensorFlow)
    augment.py   random batch augmentation (tf.data only)
    pipeline.py  `pipeline`: a split -> batches of (float32 images, one-hot label dict)

Importing this package or `types` / `sources` imports no TensorFlow.
"""
