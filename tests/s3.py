"""A real S3 server on loopback (moto's server mode) that tests can stop and restart.

moto keeps its buckets in the test process, so a restart on the same port finds the
objects written before the outage, as a real S3 would after a network partition.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs
from moto.server import ThreadedMotoServer

from tests.support import free_port

SECRET = "sEcReT-never-to-be-seen-0123456789"
"""The secret key every test uses: no log line, admin page or metric may show it."""

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIATESTINGSHADOWPROXY",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.bucket = f"rec-{secrets.token_hex(4)}"
        self.root = f"s3://{self.bucket}/fleet"
        """A bucket and root of this server's own: moto keeps buckets per test process."""
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def keys(self, prefix: str) -> list[str]:
        selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """A running server, with the test credentials in the environment."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
