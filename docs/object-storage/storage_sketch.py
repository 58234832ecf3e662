"""Sketch of augzarr's storage seam (issue #11 point 3): one interface, a local and an
object-store implementation, picked by URL scheme. Tested by test_storage_sketch.py
against moto_server. Not the final code: the shape, the pitfalls handled, and the calls.

Keys are store-relative, '/'-separated, exactly zarr's keys ("train/images/c/3/0/0/0",
"zarr.json", ".build/done/3"), so a raw chunk written here is a zarr chunk, and both
backends produce byte-identical stores.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse


class StorageError(Exception):
    """One line, meant for the user (the CLI prints str(e) and exits)."""


class LeaseHeld(StorageError):
    pass


class LeaseLost(StorageError):
    pass


@dataclass
class LeaseInfo:
    owner: str      # user@host:pid
    build_id: str
    token: str      # unique per acquisition: recognises our own create after a lost response
    expires: float  # unix time


class Storage(ABC):
    """Every byte of a store goes through this. A backend = one subclass + register()."""

    url: str
    checks_disk_space: bool = False

    # chunks and small objects ------------------------------------------------------
    @abstractmethod
    def write_atomic(self, key: str, data: bytes | memoryview) -> None:
        """All or nothing: a reader sees the old object or the whole new one."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Raises KeyError if absent."""

    def read_many(self, keys: list[str]) -> list[bytes]:
        """A window of chunks, fetched concurrently where the backend can."""
        return [self.read(k) for k in keys]

    def write_json(self, key: str, obj) -> None:
        self.write_atomic(key, json.dumps(obj, sort_keys=True, indent=1).encode())

    def read_json(self, key: str):
        return json.loads(self.read(key))

    # listing, sizes, cleanup -----------------------------------------------------------
    @abstractmethod
    def list(self, prefix: str = "") -> dict[str, int]:
        """key -> size for every object under prefix, in one listing."""

    def size(self, prefix: str = "") -> int:
        return sum(self.list(prefix).values())

    @abstractmethod
    def remove(self, prefix: str) -> None:
        """Remove every object under prefix (absent prefix: no error)."""

    # single writer -------------------------------------------------------------------
    @abstractmethod
    def lock(self, name: str, build_id: str, ttl: float = 60.0,
             on_takeover: Callable[[LeaseInfo], None] | None = None): ...

    # zarr interop: metadata and reads through zarr's own Store -------------------------
    @abstractmethod
    def zarr_store(self, read_only: bool = False): ...


_BACKENDS: dict[str, type[Storage]] = {}


def register(*schemes: str):
    def deco(cls):
        for s in schemes:
            _BACKENDS[s] = cls
        return cls
    return deco


def open_storage(url: str | os.PathLike, **kw) -> Storage:
    url = os.fspath(url)
    scheme = urlparse(url).scheme if "://" in url else ""
    try:
        cls = _BACKENDS[scheme]
    except KeyError:
        raise StorageError(f"unsupported store URL scheme {scheme!r} in {url} "
                           f"(supported: {', '.join(sorted(s or 'path' for s in _BACKENDS))})") from None
    return cls(url, **kw)


def _owner() -> str:
    return f"{os.environ.get('USER', '?')}@{os.uname().nodename}:{os.getpid()}"


# ---------------------------------------------------------------------------------------
@register("", "file")
class LocalStorage(Storage):
    """Today's behaviour: tmp file + os.replace, flock. file:// maps here (zarr would give
    file:// to fsspec's local backend, which writes in place and is not atomic)."""

    checks_disk_space = True

    def __init__(self, url: str):
        p = urlparse(url)
        self.root = Path(p.path if p.scheme == "file" else url).absolute()
        self.url = str(self.root)

    def _p(self, key: str) -> Path:
        return self.root / key

    def write_atomic(self, key, data):
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)  # augzarr today: os.pwrite of the raw chunk; fsync policy as today
        os.replace(tmp, p)

    def read(self, key):
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def list(self, prefix=""):
        base = self._p(prefix)
        if not base.exists():
            return {}
        out = {}
        for dirpath, _, files in os.walk(base):
            for f in files:
                if not f.endswith(".tmp"):
                    full = Path(dirpath) / f
                    out[full.relative_to(self.root).as_posix()] = full.stat().st_size
        return out

    def remove(self, prefix):
        import shutil

        p = self._p(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    @contextmanager
    def lock(self, name, build_id, ttl=60.0, on_takeover=None):
        # flock dies with the process, so no expiry/takeover is needed locally
        p = self._p(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                raise LeaseHeld(f"{self.url} is being built by another process ({held or 'unknown'})") from None
            info = LeaseInfo(_owner(), build_id, uuid.uuid4().hex, float("inf"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(info)).encode(), 0)
            yield info
        finally:
            os.close(fd)

    def zarr_store(self, read_only=False):
        from zarr.storage import LocalStore

        return LocalStore(self.root, read_only=read_only)


# ---------------------------------------------------------------------------------------
@register("s3", "gs", "az", "abfs")
class ObjectStorage(Storage):
    """obstore: one PUT per object (atomic on S3/GCS/Azure), listing, conditional PUT."""

    RETRY = {"max_retries": 10, "retry_timeout": timedelta(seconds=120),
             "backoff": {"init_backoff": timedelta(milliseconds=100),
                         "max_backoff": timedelta(seconds=15), "base": 2}}

    def __init__(self, url: str, retry_config: dict | None = None, client_options: dict | None = None):
        try:
            import obstore  # noqa: F401
            from obstore.store import from_url
        except ImportError:
            raise StorageError(f"{url}: object storage needs the s3 extra: pip install 'augzarr[s3]'") from None
        self.url = url.rstrip("/")
        u = urlparse(self.url)
        self.bucket = u.netloc
        opts = {"timeout": "120s", "connect_timeout": "5s"}
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        if u.scheme == "s3" and endpoint.startswith("http://"):
            opts["allow_http"] = True  # obstore refuses plain http unless told (moto, MinIO on localhost)
        if u.scheme == "s3" and not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
                                     or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")):
            # without this, obstore silently tries the EC2 metadata endpoint (169.254.169.254)
            raise StorageError(f"{url}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               f"(and AWS_ENDPOINT_URL for a non-AWS server)")
        opts.update(client_options or {})
        # from_url reads AWS_ENDPOINT_URL / AWS_REGION / keys from the environment itself
        self.store = from_url(self.url, client_options=opts, retry_config=retry_config or self.RETRY)

    # errors -> one line ---------------------------------------------------------------
    def _err(self, e: Exception, what: str) -> Exception:
        import obstore.exceptions as ox

        msg = str(e)
        if "NoSuchBucket" in msg or ("404" in msg and isinstance(e, ox.GenericError)):
            return StorageError(f"{self.url}: bucket {self.bucket!r} does not exist")
        if isinstance(e, (ox.PermissionDeniedError, ox.UnauthenticatedError)) or "403 Forbidden" in msg:
            return StorageError(f"{self.url}: access denied ({what}): check AWS_ACCESS_KEY_ID / "
                                f"AWS_SECRET_ACCESS_KEY and the bucket policy")
        if "error sending request" in msg or "Connection refused" in msg or "timed out" in msg.lower():
            return StorageError(f"{self.url}: cannot reach the object store ({what}) after retries: "
                                f"{os.environ.get('AWS_ENDPOINT_URL') or 'default endpoint'}")
        return StorageError(f"{self.url}: {what} failed: {msg.splitlines()[0][:200]}")

    def check(self) -> None:
        """Preflight at open: a HEAD cannot tell a missing bucket from a missing key (both
        404 with no body); a listing can (NoSuchBucket in the XML)."""
        import obstore as obs

        try:
            obs.list_with_delimiter(self.store, "")
        except Exception as e:
            raise self._err(e, "listing") from None

    def write_atomic(self, key, data):
        import obstore as obs

        try:
            obs.put(self.store, key, data, use_multipart=False)  # one PUT even above 5 MiB (obstore would go multipart)
        except Exception as e:
            raise self._err(e, f"writing {key}") from None

    def read(self, key):
        import obstore as obs

        try:
            return obs.get(self.store, key).bytes().to_bytes()  # .bytes() is zero-copy; to_bytes copies (sketch)
        except FileNotFoundError:
            raise KeyError(key) from None
        except Exception as e:
            raise self._err(e, f"reading {key}") from None

    def read_many(self, keys):
        import obstore as obs

        async def one(k):
            r = await obs.get_async(self.store, k)
            return (await r.bytes_async()).to_bytes()

        async def go():
            return await asyncio.gather(*(one(k) for k in keys))

        try:
            return asyncio.run(go())  # the stream would keep one loop in its prefetch thread
        except FileNotFoundError as e:
            raise KeyError(str(e).splitlines()[0]) from None
        except Exception as e:
            raise self._err(e, "reading a window") from None

    def list(self, prefix=""):
        import obstore as obs

        try:
            return {m["path"]: m["size"] for batch in obs.list(self.store, prefix or None, chunk_size=1000)
                    for m in batch}
        except Exception as e:
            raise self._err(e, f"listing {prefix}") from None

    def remove(self, prefix):
        import obstore as obs

        keys = list(self.list(prefix))
        for i in range(0, len(keys), 1000):  # DeleteObjects takes <= 1000 keys per request
            obs.delete(self.store, keys[i:i + 1000])

    # lease -------------------------------------------------------------------------------
    def _get_lease(self, key):
        import obstore as obs

        r = obs.get(self.store, key)
        return LeaseInfo(**json.loads(r.bytes().to_bytes())), r.meta["e_tag"]

    @contextmanager
    def lock(self, name, build_id, ttl=60.0, on_takeover=None) -> Iterator[LeaseInfo]:
        import threading

        import obstore as obs
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        me = LeaseInfo(_owner(), build_id, uuid.uuid4().hex, time.time() + ttl)
        body = lambda: json.dumps(asdict(me)).encode()  # noqa: E731
        try:
            etag = obs.put(self.store, name, body(), mode="create")["e_tag"]
        except AlreadyExistsError:
            cur, cur_etag = self._get_lease(name)
            if cur.token == me.token:
                etag = cur_etag  # our own create whose response was lost, then retried -> 412
            elif cur.expires > time.time():
                raise LeaseHeld(f"{self.url} is being built by {cur.owner} (build {cur.build_id}, "
                                f"lease expires in {cur.expires - time.time():.0f} s)") from None
            else:
                try:  # take over: replace exactly the expired version we read
                    etag = obs.put(self.store, name, body(), mode={"e_tag": cur_etag})["e_tag"]
                except PreconditionError:
                    raise LeaseHeld(f"{self.url}: another build took over the expired lease first") from None
                if on_takeover:
                    on_takeover(cur)
        except Exception as e:
            raise self._err(e, "taking the build lease") from None

        state = {"etag": etag, "lost": None}
        stop = threading.Event()

        def renew():
            while not stop.wait(ttl / 3):
                me.expires = time.time() + ttl
                try:
                    state["etag"] = obs.put(self.store, name, body(), mode={"e_tag": state["etag"]})["e_tag"]
                except PreconditionError:
                    # (a lost response on a renewal also lands here: re-read and compare token)
                    try:
                        cur, cur_etag = self._get_lease(name)
                    except Exception:
                        cur = None
                    if cur is not None and cur.token == me.token:
                        state["etag"] = cur_etag
                        continue
                    state["lost"] = "another build took over the lease"
                    return
                except Exception as e:  # keep trying until the lease would expire
                    if time.time() > me.expires - ttl / 3:
                        state["lost"] = f"cannot renew the lease: {e}"
                        return

        t = threading.Thread(target=renew, daemon=True)
        t.start()
        try:
            yield me
            if state["lost"]:
                raise LeaseLost(f"{self.url}: {state['lost']}")
        finally:
            stop.set()
            t.join()
            if not state["lost"]:
                try:
                    obs.delete(self.store, name)
                except Exception:
                    pass  # expires on its own

    def lease_ok(self) -> None:
        """The build loop calls this between chunks (cheap: no request)."""

    def zarr_store(self, read_only=False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.store, read_only=read_only)
