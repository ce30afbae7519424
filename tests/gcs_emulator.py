"""Runs gcp-storage-emulator for the gs:// tests, with the one header it leaves out.

    python -m tests.gcs_emulator start --host 127.0.0.1 --port PORT --default-bucket bucket ...

The emulator answers a media download without `x-goog-generation`, the header GCS sends with
every object read. Tensorstore (orbax's array writer) takes the object's generation from it
and conditions the next write of an OCDBT manifest on it; without it the read has no
generation and the write fails with "Malformed StorageGeneration". This wrapper adds the
header (the object's own generation, which the emulator already keeps) and starts the
emulator's own command line.
"""

import sys

from gcp_storage_emulator import __main__ as cli
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj.get("generation", "1"))
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  except Exception:  # noqa: BLE001  (a missing object: the emulator's handler answers 404)
    pass
  return _download(request, response, storage, *args, **kwargs)


objects.download = download_with_generation  # objects.get(alt=media) calls it by name
for _regex, _methods in server.HANDLERS:
  for _method, _handler in list(_methods.items()):
    if _handler is _download:
      _methods[_method] = download_with_generation

if __name__ == "__main__":
  cli.main(sys.argv[1:])
