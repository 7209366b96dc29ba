"""Data: datasets as arrays (or lazily read files) and the input pipelines that feed `model.fit`.

    types.py     DatasetInfo, Split, Splits (no TensorFlow)
    sources/     one module per dataset, found by name through `sources.get` (shapes, fashion_mnist, cifar, files)
    datasets.py  `prepare(DataConfig, seed)`: a source's splits + validation carve + training cap
    images.py    `fit_images` (the one place channels and size adapt), file decoding in tf.data
    host_images.py  the same decoding with Pillow (no TensorFlow), `FileImages` (files read like an array)
    headers.py   image size from a file's header: the decompression-bomb guard (no TensorFlow)
    augment.py   random batch augmentation (tf.data only)
    pipeline.py  `pipeline`: a split -> tf.data batches of (float32 images, one-hot label dict)
    host.py, host_augment.py  the same batches and augmentation in numpy threads (no TensorFlow)
    feeds.py     `--input_pipeline`: which of the two feeds a run (tf_data where TensorFlow is, else host)

Importing this package, `types`, `sources`, `feeds` or the host modules imports no TensorFlow.
"""
