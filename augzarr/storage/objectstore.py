"""A store on object storage (s3://, gs://, az://) through obstore, the Rust object_store client.

Why obstore and not s3fs: about 2x the read throughput and half the CPU per GiB on the stream's
pattern, first-class conditional PUTs for the lease, and quick, bounded retries
(BENCHMARKS.md, docs/object-storage/REPORT.md). Credentials and endpoint come from the standard
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION; GOOGLE_*,
AZURE_* for the others), read by obstore itself; every message names the variables of the URL's
own provider (PROVIDERS).

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
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .base import LeaseHeld, Storage, StorageError, register

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

LOCK_KEY = ".lock"  # the lease object: owner, build id, token, expiry
LEASE_SECONDS = 60.0  # renewed every third of it; AUGZARR_LEASE_SECONDS overrides (tests use a few seconds)
DELETE_BATCH = 1000  # keys per DeleteObjects request, S3's limit
RETRY: RetryConfig = {  # 5xx, dropped and refused connections, timeouts: retried with backoff, never surfaced unless they last
    "max_retries": 10,
    "retry_timeout": timedelta(seconds=120),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15), "base": 2},
}


@dataclass(frozen=True)
class Provider:
    """What a message about one provider's store names: its own variables, never another provider's."""

    name: str
    credentials: tuple[str, ...]  # any of these set: the client has credentials to try
    missing: str  # what to do when none is set
    denied: str  # which variables to check when the server refuses them
    endpoint: str  # the variable naming a server other than the provider's
    account: tuple[str, ...] = ()  # Azure: the storage account's name, needed before anything else
    default_file: str | None = None  # a credentials file the client reads when no variable names one
    metadata_host: Callable[[], bool] = lambda: False  # a machine of this cloud: its metadata service gives credentials


def dmi(field: str) -> str:
    """A line of the machine's DMI data (Linux), which names the cloud a virtual machine runs in; '' elsewhere."""
    try:
        return Path("/sys/class/dmi/id", field).read_text().strip()
    except OSError:
        return ""


AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # the chassis asset tag of every Azure virtual machine

PROVIDERS = {
    "s3": Provider(
        name="S3",
        endpoint="AWS_ENDPOINT_URL",
        credentials=(
            "AWS_ACCESS_KEY_ID",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ),
        missing="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server other than AWS)",
        denied="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket's policy",
        metadata_host=lambda: "Amazon EC2" in (dmi("sys_vendor"), dmi("board_vendor")),
    ),
    "gs": Provider(
        name="Google Cloud Storage",
        endpoint="GOOGLE_BASE_URL",
        credentials=(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_BEARER_TOKEN",
            "GOOGLE_SKIP_SIGNATURE",
        ),
        missing="set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file (or GOOGLE_SERVICE_ACCOUNT_KEY to "
        "the key itself), or run gcloud auth application-default login",
        denied="GOOGLE_APPLICATION_CREDENTIALS (the service account's key) and the bucket's permissions",
        default_file="~/.config/gcloud/application_default_credentials.json",
        metadata_host=lambda: bool(os.environ.get("GCE_METADATA_HOST")) or dmi("product_name").startswith("Google"),
    ),
    "az": Provider(
        name="Azure Blob Storage",
        endpoint="AZURE_STORAGE_ENDPOINT",
        account=("AZURE_STORAGE_ACCOUNT_NAME",),
        credentials=(
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_STORAGE_MASTER_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_TOKEN",
            "AZURE_STORAGE_CLIENT_SECRET",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_USE_AZURE_CLI",
            "AZURE_STORAGE_USE_EMULATOR",
            "AZURE_SKIP_SIGNATURE",
            "AZURE_MSI_ENDPOINT",
            "AZURE_IDENTITY_ENDPOINT",
        ),
        missing="set AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN, or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and "
        "AZURE_TENANT_ID for a service principal)",
        denied="AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN) and the container's access",
        metadata_host=lambda: dmi("chassis_asset_tag") == AZURE_ASSET_TAG,
    ),
}
PROVIDERS["abfs"] = PROVIDERS["az"]


CLIENT_VARIABLE_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "GCE_", "AUGZARR_")  # what the clients and the lease read


def client_environment() -> dict[str, str]:
    """This process's variables that an object store's client reads, for a worker started by a forkserver: its
    environment is the one of the moment the forkserver started, which may lack credentials set since."""
    return {name: value for name, value in os.environ.items() if name.startswith(CLIENT_VARIABLE_PREFIXES)}


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


def lease_seconds() -> float:
    return float(os.environ.get("AUGZARR_LEASE_SECONDS", LEASE_SECONDS))


def this_process() -> dict:
    """Who holds a lease, precisely enough for a later build on the same machine to tell whether that
    process still runs: the host name, the kernel's boot and PID namespace (two containers may share a
    host name, never both of these), the PID, and the process's start time (a PID is reused)."""
    return {
        "host": socket.gethostname(),
        "boot": read_text("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": pid_namespace(),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
    }


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat), None where there is no /proc or no such
    running process (a zombie, killed but not yet reaped, has stopped too)."""
    stat = read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces and parentheses
    return None if fields[0] in ("Z", "X") else fields[19]


def holder_here(holder: dict | None) -> str | None:
    """'running' or 'stopped' for a lease holder that was a process of this machine (same host name, boot and PID
    namespace); None when it was not, or when that cannot be told (no /proc): then only the lease's expiry frees it."""
    here = this_process()
    if not isinstance(holder, dict) or here["boot"] is None or here["pid_namespace"] is None:
        return None
    if any(holder.get(key) != here[key] for key in ("host", "boot", "pid_namespace")):
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    return "running" if process_start(pid) == holder.get("started") else "stopped"


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(seconds))


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
            raise StorageError(
                f"{location}: give a bucket and a path for the store, as in {self.scheme}://BUCKET/datasets/aug.zarr"
            )
        self.provider = PROVIDERS[self.scheme]
        self.check_credentials()
        options: ClientConfig = {"timeout": "120s", "connect_timeout": "5s"}
        if os.environ.get(self.provider.endpoint, "").startswith("http://"):
            options["allow_http"] = True  # a local server (MinIO, moto, Azurite, fake-gcs-server) without TLS
        try:
            self.store = from_url(self.location, client_options=options, retry_config=RETRY)
        except Exception as exc:  # a URL or configuration the client refuses before any request
            raise self.error(exc, "opening the store") from None
        self._loops = threading.local()
        self._checked = False

    # -- errors, in one line ------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """Refuse, before any request, a store the client has no credentials for: without them obstore asks
        the cloud's metadata service, and off that cloud it waits on it, then fails in another provider's words."""
        provider = self.provider
        # abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/... names the account itself
        no_account = (
            bool(provider.account) and not any(os.environ.get(v) for v in provider.account) and "@" not in self.bucket
        )
        no_credentials = not (
            any(os.environ.get(v) for v in provider.credentials)
            or (provider.default_file and Path(provider.default_file).expanduser().is_file())
            or provider.metadata_host()
        )
        if no_account or no_credentials:
            lacking = " or ".join(
                word for word, lacks in (("account", no_account), ("credentials", no_credentials)) if lacks
            )
            todo = ([f"set {provider.account[0]} to the storage account's name"] if no_account else []) + (
                [provider.missing] if no_credentials else []
            )
            raise StorageError(f"{self.location}: no {provider.name} {lacking}: {'; '.join(todo)}")

    def error(self, exc: Exception, doing: str) -> StorageError:
        import obstore.exceptions as ox

        text = str(exc)
        provider = self.provider
        endpoint = os.environ.get(provider.endpoint)
        # the server's own code for it (S3 and compatibles: NoSuchBucket; Azure: ContainerNotFound); never a bare
        # "404", which a message can hold anywhere (an endpoint's port, 127.0.0.1:40409)
        if any(code in text for code in ("NoSuchBucket", "ContainerNotFound", "bucket does not exist")):
            return StorageError(
                f"{self.location}: bucket {self.bucket!r} does not exist"
                + (f" at {endpoint}" if endpoint else "")
                + ": create it, or check the URL"
            )
        if "MissingAccount" in text:
            return StorageError(
                f"{self.location}: no {provider.name} account: set {provider.account[0]} to the storage account's name"
            )
        if (
            isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError))
            or "403 Forbidden" in text
            or "InvalidAccessKeyId" in text
            or "SignatureDoesNotMatch" in text
            or "AuthenticationFailed" in text
        ):
            return StorageError(f"{self.location}: access denied {doing}: check {provider.denied}")
        if any(
            s in text
            for s in ("error sending request", "Connection refused", "connection closed", "timed out", "dns error")
        ):
            return StorageError(
                f"{self.location}: cannot reach the object store {doing} after retrying"
                + (f" ({endpoint})" if endpoint else "")
                + f": check the network and {provider.endpoint}, "
                "then run the same command again"
            )
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

        return self.read_at_once(keys, lambda: [one(k, o) for k, o in zip(keys, outs)])

    def read_many(self, keys: list[str]) -> list[bytes]:
        """Every object of a window requested at once (coded chunks, whose size only the object knows)."""
        import obstore as obs

        async def one(key: str):
            return await (await obs.get_async(self.store, key)).bytes_async()

        return self.read_at_once(keys, lambda: [one(k) for k in keys])

    def read_at_once(self, keys: list[str], reads: Callable[[], list]) -> list:
        """The reads (coroutines, made in the loop) of these keys, all at once: a missing object is the KeyError
        naming it, any other failure one StorageError."""

        async def all_of() -> list:
            return list(await asyncio.gather(*reads()))

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
            obs.put(
                self.store, key, data, use_multipart=False
            )  # one PUT: atomic, whatever the size (S3's limit is 5 GiB)
        except Exception as exc:
            raise self.error(exc, f"writing {key}") from None

    def list(self, prefix: str = "") -> dict[str, int]:
        """Objects under prefix taken as a folder: "a/b" lists a/b/..., never a/bc."""
        import obstore as obs

        try:
            return {
                meta["path"]: meta["size"]
                for batch in obs.list(self.store, prefix or None, chunk_size=1000)
                for meta in batch
            }
        except Exception as exc:
            raise self.error(exc, f"listing {prefix or 'the store'}") from None

    def remove(self, prefix: str) -> None:
        # a listing names what lies under prefix/ (object_store lists by path segments); the key itself may be an object
        keys = list(self.list(prefix)) + ([prefix] if prefix and not prefix.endswith("/") and self.has(prefix) else [])
        self.delete(keys, f"removing {prefix or 'the store'}")

    def remove_all_except(self, keep: set[str]) -> None:
        self.delete([k for k in self.list() if k.split("/", 1)[0] not in keep], "removing the store's old contents")

    def delete(self, keys: Sequence[str], doing: str) -> None:
        """These objects, in as few requests as S3 allows."""
        import obstore as obs

        try:
            for start in range(0, len(keys), DELETE_BATCH):
                obs.delete(self.store, keys[start : start + DELETE_BATCH])
        except Exception as exc:
            raise self.error(exc, doing) from None

    def zarr_store(self, read_only: bool = False):
        from zarr.storage import ObjectStore

        return ObjectStore(self.store, read_only=read_only)

    # -- the single-writer lease ----------------------------------------------------------------------

    def read_lease(self) -> tuple[dict, str | None]:
        import obstore as obs

        result = obs.get(self.store, LOCK_KEY)
        return json.loads(bytes(result.bytes())), result.meta["e_tag"]

    def held_message(self, current: dict) -> str:
        """Why a build is refused: who holds the lease and what is known of it, no more (a holder on another
        machine may have stopped a moment ago: only its renewals tell)."""
        now, expires = time.time(), current.get("expires", 0)
        running = " (running on this machine)" if holder_here(current.get("process")) == "running" else ""
        renewed = current.get("renewed")
        last = (
            f"last renewed its lease {now - renewed:.0f} s ago ({clock(renewed)})"
            if isinstance(renewed, (int, float))
            else "holds its lease"
        )
        return (
            f"{self.location} is locked by the build of {current.get('owner', 'another build-aug')}{running}, which {last}; "
            f"the lease expires in {max(0, expires - now):.0f} s ({clock(expires)}) unless renewed again: wait for that build "
            "to finish, or stop it, then run this again"
        )

    @contextmanager
    def writer_lock(self, build_id: str, say=print):
        """A lease object created only if absent (a conditional PUT), renewed by a thread every third
        of its time; a second build is refused at once; a lease whose writer stopped renewing it is
        taken over once it has expired (Lease says how). Yields a check that raises once the lease is lost."""
        self.check_reachable()
        lease = Lease(self, build_id, say)
        lease.take()
        thread = threading.Thread(target=lease.keep_renewed, daemon=True, name="augzarr-lease")
        thread.start()
        try:
            yield lease.check
            lease.check()
        finally:
            lease.stopped.set()
            thread.join()
            lease.release()


class Lease:
    """One build's lease on an object store: its LOCK_KEY object, taken (created only if absent, or taken over from a
    build that stopped), renewed every third of its time, and released. The token tells our own writes (their response
    lost, the retry refused) from another build's; each write replaces exactly the version last seen (its ETag)."""

    def __init__(self, storage: ObjectStorage, build_id: str, say: Callable[[str], None]):
        self.storage, self.say = storage, say
        self.ttl = lease_seconds()
        process, now = this_process(), time.time()
        self.record: dict[str, Any] = {  # the lease object's JSON
            "owner": f"{user()}@{process['host']}:{process['pid']}",
            "build_id": build_id,
            "token": uuid.uuid4().hex,
            "renewed": now,
            "expires": now + self.ttl,
            "process": process,
        }
        self.etag: str | None = None
        self.lost: str | None = None  # why the lease was lost, once it is
        self.stopped = threading.Event()

    def body(self) -> bytes:
        return json.dumps(self.record).encode()

    def put(self, mode) -> str | None:
        import obstore as obs

        return obs.put(self.storage.store, LOCK_KEY, self.body(), mode=mode)["e_tag"]

    def take(self) -> None:
        """Create the lease; if one is there, recognise it as ours, refuse a live holder's, or take over a stopped one's."""
        from obstore.exceptions import AlreadyExistsError

        try:
            try:
                self.etag = self.put("create")
            except AlreadyExistsError:
                self.take_existing()
        except StorageError:
            raise
        except Exception as exc:
            raise self.storage.error(exc, "taking the build's lease") from None

    def take_existing(self) -> None:
        from obstore.exceptions import PreconditionError

        current, current_etag = self.storage.read_lease()
        gone = holder_here(current.get("process")) == "stopped"
        if current.get("token") == self.record["token"]:  # our own create: its answer was lost
            self.etag = current_etag
            return
        if current.get("expires", 0) > time.time() and not gone:
            raise LeaseHeld(self.storage.held_message(current)) from None
        try:  # replace exactly the version we read; a build that beats us to it wins
            self.etag = self.put({"e_tag": current_etag})
        except PreconditionError:
            raise LeaseHeld(
                f"{self.storage.location}: another build took over the lease of the build that stopped first"
            ) from None
        if gone:
            self.say(
                f"took over the lease of a build that stopped ({current.get('owner')}: no longer running on this machine)"
            )
        else:
            self.say(
                f"took over the lease of a build that stopped ({current.get('owner')}, expired "
                f"{time.time() - current.get('expires', 0):.0f} s ago)"
            )

    def keep_renewed(self) -> None:
        """The renewing thread: every third of the lease's time until stopped, or until the lease is lost."""
        while not self.stopped.wait(self.ttl / 3):
            if not self.renew():
                return

    def renew(self) -> bool:
        """Extend the lease; False once it is lost (another build took it over, or it could not be renewed in time)."""
        from obstore.exceptions import PreconditionError

        self.record["renewed"] = time.time()
        self.record["expires"] = self.record["renewed"] + self.ttl
        try:
            self.etag = self.put({"e_tag": self.etag})
        except PreconditionError:
            try:  # our renewal applied but its response was lost: the token says so
                current, current_etag = self.storage.read_lease()
            except Exception:
                current, current_etag = {}, None
            if current.get("token") == self.record["token"]:
                self.etag = current_etag
                return True
            self.lost = f"another build ({current.get('owner', '?')}) took over the lease"
            return False
        except Exception as exc:  # keep trying while the lease still holds
            if time.time() > self.record["expires"] - self.ttl / 3:
                self.lost = f"the lease could not be renewed ({self.storage.error(exc, 'renewing the lease')})"
                return False
        return True

    def check(self) -> None:
        if self.lost:
            raise StorageError(f"{self.storage.location}: stopped: {self.lost}; run the same command again to resume")

    def release(self) -> None:
        """Delete the lease, unless it was lost (then it is another build's); a failed delete leaves it to expire."""
        import obstore as obs

        if not self.lost:
            try:
                obs.delete(self.storage.store, LOCK_KEY)
            except Exception:
                pass  # it expires on its own
