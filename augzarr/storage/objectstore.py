"""A store on object storage (s3://, gs://, az://) through obstore, the Rust object_store client.

Why obstore and not s3fs: about 2x the read throughput and half the CPU per GiB on the stream's
pattern, first-class conditional PUTs for the lease, and quick, bounded retries
(BENCHMARKS.md, docs/object-storage/REPORT.md). Credentials and endpoint come from the standard
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION; GOOGLE_*,
AZURE_* for the others), read by obstore itself.

obstore is not fork-safe once it has made a request (its runtime's threads do not survive a
fork): build workers for an object store are started with forkserver (fork_safe = False).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlparse

from .base import LeaseHeld, Storage, StorageError, register

LOCK_KEY = ".lock"  # the lease object: owner, build id, token, expiry
LEASE_SECONDS = 60.0  # renewed every third of it; AUGZARR_LEASE_SECONDS overrides (tests use a few seconds)
DELETE_BATCH = 1000  # keys per DeleteObjects request, S3's limit
RETRY = {  # 5xx, dropped and refused connections, timeouts: retried with backoff, never surfaced unless they last
    "max_retries": 10,
    "retry_timeout": timedelta(seconds=120),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15), "base": 2},
}
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


def lease_seconds() -> float:
    return float(os.environ.get("AUGZARR_LEASE_SECONDS", LEASE_SECONDS))


@register("s3", "gs", "az", "abfs")
class ObjectStorage(Storage):
    fork_safe = False

    def __init__(self, location: str):
        try:
            from obstore.store import from_url
        except ImportError:
            raise StorageError(f"{location}: object storage needs the s3 extra: pip install 'augzarr[s3]'") from None
        self.location = location.rstrip("/")
        parsed = urlparse(self.location)
        self.scheme, self.bucket = parsed.scheme, parsed.netloc
        if not self.bucket or not parsed.path.strip("/"):
            raise StorageError(f"{location}: give a bucket and a path for the store, as in {self.scheme}://BUCKET/datasets/aug.zarr")
        options = {"timeout": "120s", "connect_timeout": "5s"}
        if self.scheme == "s3":
            if not any(os.environ.get(v) for v in CREDENTIAL_VARIABLES):
                # obstore would otherwise ask the EC2 metadata endpoint, and wait on it off EC2
                raise StorageError(f"{location}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                   "(and AWS_ENDPOINT_URL for a server other than AWS)")
            if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
                options["allow_http"] = True  # a local server (MinIO, moto) without TLS
        self.store = from_url(self.location, client_options=options, retry_config=RETRY)
        self._loops = threading.local()
        self._checked = False

    # -- errors, in one line ------------------------------------------------------------------------

    def error(self, exc: Exception, doing: str) -> StorageError:
        import obstore.exceptions as ox

        text = str(exc)
        endpoint = os.environ.get("AWS_ENDPOINT_URL") if self.scheme == "s3" else None
        # the server's own code for it (S3 and compatibles: NoSuchBucket; Azure: ContainerNotFound); never a bare
        # "404", which a message can hold anywhere (an endpoint's port, 127.0.0.1:40409)
        if any(code in text for code in ("NoSuchBucket", "ContainerNotFound", "bucket does not exist")):
            return StorageError(f"{self.location}: bucket {self.bucket!r} does not exist"
                                + (f" at {endpoint}" if endpoint else "") + ": create it, or check the URL")
        if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError)) or "403 Forbidden" in text \
                or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            return StorageError(f"{self.location}: access denied {doing}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                "and the bucket's policy")
        if any(s in text for s in ("error sending request", "Connection refused", "connection closed", "timed out", "dns error")):
            return StorageError(f"{self.location}: cannot reach the object store {doing} after retrying"
                                + (f" ({endpoint})" if endpoint else "") + ": check the network and AWS_ENDPOINT_URL, "
                                "then run the same command again")
        first = (text.splitlines() or [type(exc).__name__])[0]
        return StorageError(f"{self.location}: {doing} failed: {first[:200]}")

    def check_reachable(self) -> None:
        """Once: a listing, the one request that tells a missing bucket from a missing key."""
        if self._checked:
            return
        import obstore as obs

        try:
            obs.list_with_delimiter(self.store, None)
        except Exception as exc:
            raise self.error(exc, "listing the store") from None
        self._checked = True

    # -- objects --------------------------------------------------------------------------------------

    def exists(self) -> bool:
        self.check_reachable()
        import obstore as obs

        try:
            return any(len(batch) for batch in obs.list(self.store, None, chunk_size=1))
        except Exception as exc:
            raise self.error(exc, "listing the store") from None

    def has(self, key: str) -> bool:
        import obstore as obs

        try:
            obs.head(self.store, key)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self.error(exc, f"looking for {key}") from None

    def read(self, key: str) -> bytes:
        import obstore as obs

        try:
            return bytes(obs.get(self.store, key).bytes())
        except FileNotFoundError:
            raise KeyError(key) from None
        except Exception as exc:
            raise self.error(exc, f"reading {key}") from None

    def read_into(self, key: str, out: memoryview) -> int:
        return self.read_many_into([key], [out])[0]

    def read_many_into(self, keys: list[str], outs: list[memoryview]) -> list[int]:
        """Every object of a window requested at once, each copied into its place as it arrives."""
        import obstore as obs

        async def one(key: str, out: memoryview) -> int:
            result = await obs.get_async(self.store, key)
            data = memoryview(await result.bytes_async())
            n = min(len(data), len(out))
            out[:n] = data[:n]
            return len(data)

        async def all_of() -> list[int]:
            return list(await asyncio.gather(*(one(k, o) for k, o in zip(keys, outs))))

        try:
            return self.loop().run_until_complete(all_of())
        except FileNotFoundError as exc:
            missing = next((k for k in keys if k in str(exc)), keys[0])
            raise KeyError(missing) from None
        except Exception as exc:
            raise self.error(exc, f"reading {keys[0]}{' and more' if len(keys) > 1 else ''}") from None

    def loop(self) -> asyncio.AbstractEventLoop:
        """One event loop per calling thread (the stream's reader thread keeps its own)."""
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop

    def write(self, key: str, data: bytes | memoryview) -> None:
        import obstore as obs

        try:
            obs.put(self.store, key, data, use_multipart=False)  # one PUT: atomic, whatever the size (S3's limit is 5 GiB)
        except Exception as exc:
            raise self.error(exc, f"writing {key}") from None

    def list(self, prefix: str = "") -> dict[str, int]:
        """Objects under prefix taken as a folder: "a/b" lists a/b/..., never a/bc."""
        import obstore as obs

        try:
            return {meta["path"]: meta["size"] for batch in obs.list(self.store, prefix or None, chunk_size=1000) for meta in batch}
        except Exception as exc:
            raise self.error(exc, f"listing {prefix or 'the store'}") from None

    def remove(self, prefix: str) -> None:
        # a listing names what lies under prefix/ (object_store lists by path segments); the key itself may be an object
        keys = list(self.list(prefix)) + ([prefix] if prefix and not prefix.endswith("/") and self.has(prefix) else [])
        self.delete(keys, f"removing {prefix or 'the store'}")

    def remove_all_except(self, keep: set[str]) -> None:
        self.delete([k for k in self.list() if k.split("/", 1)[0] not in keep], "removing the store's old contents")

    def delete(self, keys: list[str], doing: str) -> None:
        """These objects, in as few requests as S3 allows."""
        import obstore as obs

        try:
            for start in range(0, len(keys), DELETE_BATCH):
                obs.delete(self.store, keys[start:start + DELETE_BATCH])
        except Exception as exc:
            raise self.error(exc, doing) from None

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.store, read_only=read_only)

    # -- the single-writer lease ----------------------------------------------------------------------

    def read_lease(self) -> tuple[dict, str]:
        import obstore as obs

        result = obs.get(self.store, LOCK_KEY)
        return json.loads(bytes(result.bytes())), result.meta["e_tag"]

    @contextmanager
    def writer_lock(self, build_id: str, say=print):
        """A lease object created only if absent (a conditional PUT), renewed by a thread every third
        of its time; a second build is refused at once; a lease whose writer stopped renewing it is
        taken over once it has expired. The token tells our own create (its response lost, the
        retry refused) from another build's."""
        import obstore as obs
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        self.check_reachable()
        ttl = lease_seconds()
        lease = {"owner": f"{user()}@{socket.gethostname()}:{os.getpid()}", "build_id": build_id,
                 "token": uuid.uuid4().hex, "expires": time.time() + ttl}

        def body() -> bytes:
            return json.dumps(lease).encode()

        try:
            try:
                etag = obs.put(self.store, LOCK_KEY, body(), mode="create")["e_tag"]
            except AlreadyExistsError:
                current, current_etag = self.read_lease()
                if current.get("token") == lease["token"]:
                    etag = current_etag
                elif current.get("expires", 0) > time.time():
                    raise LeaseHeld(f"{self.location} is being built by {current.get('owner')} right now (its lease runs "
                                    f"{current['expires'] - time.time():.0f} s more and is renewed while it runs): wait for it "
                                    "to finish, or stop it, then run this again") from None
                else:
                    try:  # replace exactly the expired version we read; a build that beats us to it wins
                        etag = obs.put(self.store, LOCK_KEY, body(), mode={"e_tag": current_etag})["e_tag"]
                    except PreconditionError:
                        raise LeaseHeld(f"{self.location}: another build took over its expired lease first") from None
                    say(f"took over the lease of a build that stopped ({current.get('owner')}, expired "
                        f"{time.time() - current.get('expires', 0):.0f} s ago)")
        except StorageError:
            raise
        except Exception as exc:
            raise self.error(exc, "taking the build's lease") from None

        state = {"etag": etag, "lost": None}
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                lease["expires"] = time.time() + ttl
                try:
                    state["etag"] = obs.put(self.store, LOCK_KEY, body(), mode={"e_tag": state["etag"]})["e_tag"]
                except PreconditionError:
                    try:  # our renewal applied but its response was lost: the token says so
                        current, current_etag = self.read_lease()
                    except Exception:
                        current, current_etag = {}, None
                    if current.get("token") == lease["token"]:
                        state["etag"] = current_etag
                        continue
                    state["lost"] = f"another build ({current.get('owner', '?')}) took over the lease"
                    return
                except Exception as exc:  # keep trying while the lease still holds
                    if time.time() > lease["expires"] - ttl / 3:
                        state["lost"] = f"the lease could not be renewed ({self.error(exc, 'renewing the lease')})"
                        return

        def check() -> None:
            if state["lost"]:
                raise StorageError(f"{self.location}: stopped: {state['lost']}; run the same command again to resume")

        thread = threading.Thread(target=renew, daemon=True, name="augzarr-lease")
        thread.start()
        try:
            yield check
            check()
        finally:
            stop.set()
            thread.join()
            if not state["lost"]:
                try:
                    obs.delete(self.store, LOCK_KEY)
                except Exception:
                    pass  # it expires on its own
