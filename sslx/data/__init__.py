"""Image data for sslx: random-access sources and the grain training pipeline.

    source = build_source(config.dataset, "train")        # or EmbeddedSource("train"), ...
    loader = make_train_loader(source, global_batch_size, seed)
    batches = DevicePrefetcher(loader, batch_sharding)     # global batches, 2 steps ahead
    images, labels = decode_all(build_source(config.dataset, "test"))   # evaluation

Sources yield ``{"image": uint8[S, S, 3], "label": int32}`` (label -1 if unlabeled); see
``sslx.data.sources`` for layouts and error handling and ``sslx.data.pipeline`` for the order of
records and checkpointing. With ``make_train_loader(..., view_maker=ViewMaker(groups, seed))``
the random-resized crops are made on the host from the full images (``sslx.data.crops``).
``sslx.data.array_records`` writes and reads prepared ArrayRecord shards.
"""

from sslx.data import array_records  # registers dataset.name=array_record
from sslx.data.crops import HOST_CROP_METHODS, CropGroup, ViewMaker, crop_groups
from sslx.data.pipeline import make_train_loader, steps_per_epoch, to_global_array
from sslx.data.prefetch import DevicePrefetcher
from sslx.data.sources import (
  DATASETS,
  IMAGE_EXTENSIONS,
  EmbeddedSource,
  FlatFolderSource,
  ImageFolderSource,
  TfdsSource,
  balanced_subset,
  build_source,
  decode_all,
  decode_image,
)

__all__ = [
  "HOST_CROP_METHODS",
  "array_records",
  "CropGroup",
  "DevicePrefetcher",
  "ViewMaker",
  "crop_groups",
  "DATASETS",
  "IMAGE_EXTENSIONS",
  "EmbeddedSource",
  "FlatFolderSource",
  "ImageFolderSource",
  "TfdsSource",
  "balanced_subset",
  "build_source",
  "decode_all",
  "decode_image",
  "make_train_loader",
  "steps_per_epoch",
  "to_global_array",
]
