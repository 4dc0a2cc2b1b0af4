"""The tests' Google Cloud Storage server: gcp-storage-emulator, its downloads carrying the object's
generation (the x-goog-generation header) as GCS's do. tensorstore, through which orbax writes
checkpoints, reads the generation from every download and refuses one without it ("Malformed
StorageGeneration"); the emulator sends it on none.

    python tests/gcs_server.py PORT BUCKET   (in memory, on 127.0.0.1; every request logged to stderr)
"""
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        stored = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return
    response["x-goog-generation"] = str(stored["generation"])
    response["x-goog-metageneration"] = str(stored["metageneration"])


objects.download = download  # before the server module builds its table of handlers from it

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    port, bucket = sys.argv[1:]
    main(["start", "--host", "127.0.0.1", "--port", port, "--in-memory", "--default-bucket", bucket])
