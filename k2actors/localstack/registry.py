"""Schema Registry double: DEVELOPMENT STAND-IN ONLY. Deployments use Confluent Schema Registry.

Serves the subset of the Confluent REST API that confluent-kafka's SchemaRegistryClient
and Avro serde use: register a schema under a subject, look it up, fetch by id, list
subjects and versions, read and set compatibility, and a backward-compatibility check
for Avro records (a field the new schema adds must have a default). Storage is memory.
Optionally HTTP basic auth and TLS, as a secured registry would ask of its clients.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class SchemaStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: list[dict] = []  # index + 1 is the id
        self._subjects: dict[str, list[int]] = {}  # subject -> schema id per version
        self.compatibility: dict[str | None, str] = {None: "BACKWARD"}

    def register(self, subject: str, schema: dict) -> int:
        with self._lock:
            schema_id = self._id_of(schema)
            if schema_id is None:
                self._schemas.append(schema)
                schema_id = len(self._schemas)
            versions = self._subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def lookup(self, subject: str, schema: dict) -> tuple[int, int] | None:
        with self._lock:
            schema_id = self._id_of(schema)
            versions = self._subjects.get(subject, [])
            if schema_id is None or schema_id not in versions:
                return None
            return schema_id, versions.index(schema_id) + 1

    def by_id(self, schema_id: int) -> dict | None:
        with self._lock:
            return self._schemas[schema_id - 1] if 0 < schema_id <= len(self._schemas) else None

    def subjects(self) -> list[str]:
        with self._lock:
            return sorted(self._subjects)

    def versions(self, subject: str) -> list[int] | None:
        with self._lock:
            ids = self._subjects.get(subject)
            return None if ids is None else list(range(1, len(ids) + 1))

    def version(self, subject: str, version: str) -> tuple[int, int] | None:
        with self._lock:
            ids = self._subjects.get(subject)
            if not ids:
                return None
            number = len(ids) if version in ("latest", "-1") else int(version)
            return (ids[number - 1], number) if 0 < number <= len(ids) else None

    def delete(self, subject: str) -> list[int] | None:
        with self._lock:
            ids = self._subjects.pop(subject, None)
            return None if ids is None else list(range(1, len(ids) + 1))

    def _id_of(self, schema: dict) -> int | None:
        canonical = _canonical(schema)
        for index, known in enumerate(self._schemas):
            if _canonical(known) == canonical:
                return index + 1
        return None


def _canonical(schema: dict) -> tuple:
    try:
        text = json.dumps(json.loads(schema["schema"]), sort_keys=True, separators=(",", ":"))
    except (ValueError, TypeError):
        text = schema["schema"]
    return text, schema.get("schemaType", "AVRO")


def backward_compatible(new_schema: str, old_schema: str) -> bool:
    """Can a reader with the new record schema read data written with the old one?"""
    new, old = json.loads(new_schema), json.loads(old_schema)
    if not (isinstance(new, dict) and isinstance(old, dict) and new.get("type") == old.get("type") == "record"):
        return new == old
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    for field in new.get("fields", []):
        if field["name"] not in old_fields and "default" not in field:
            return False
        if field["name"] in old_fields and json.dumps(field["type"], sort_keys=True) != json.dumps(
            old_fields[field["name"]]["type"], sort_keys=True
        ):
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    store: SchemaStore
    authorization: str | None  # the expected Authorization header, when basic auth is on
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stand-in stays quiet
        pass

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        for route_method, pattern, handler in _ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                body = self._body() if method in ("POST", "PUT") else None
                if self.authorization and self.headers.get("Authorization") != self.authorization:
                    return self._reply(401, {"error_code": 401, "message": "Unauthorized"})
                status, payload = handler(self.store, *map(unquote, match.groups()), body=body)
                return self._reply(status, payload)
        self._reply(404, {"error_code": 404, "message": f"no route for {method} {path}"})

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _reply(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _not_found(code: int, message: str):
    return HTTPStatus.NOT_FOUND, {"error_code": code, "message": message}


def _schema_body(body: dict) -> dict:
    schema = {"schema": body["schema"]}
    if body.get("schemaType", "AVRO") != "AVRO":
        schema["schemaType"] = body["schemaType"]
    return schema


def _register(store, subject, body):
    try:
        json.loads(body["schema"])
    except (KeyError, ValueError):
        return 422, {"error_code": 42201, "message": "Invalid schema"}
    latest = store.version(subject, "latest")
    level = store.compatibility.get(subject, store.compatibility[None])
    if (latest and level.startswith("BACKWARD") and store.lookup(subject, _schema_body(body)) is None
            and not backward_compatible(body["schema"], store.by_id(latest[0])["schema"])):
            return 409, {"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}
    return 200, {"id": store.register(subject, _schema_body(body))}


def _lookup(store, subject, body):
    found = store.lookup(subject, _schema_body(body))
    if found is None:
        return _not_found(40403, "Schema not found")
    schema_id, version = found
    return 200, {"subject": subject, "id": schema_id, "version": version, **_schema_body(body)}


def _get_schema(store, schema_id, body):
    schema = store.by_id(int(schema_id))
    return (200, schema) if schema else _not_found(40403, "Schema not found")


def _subjects(store, body):
    return 200, store.subjects()


def _versions(store, subject, body):
    versions = store.versions(subject)
    return (200, versions) if versions is not None else _not_found(40401, "Subject not found")


def _version(store, subject, version, body):
    found = store.version(subject, version)
    if found is None:
        return _not_found(40402, "Version not found")
    schema_id, number = found
    return 200, {"subject": subject, "id": schema_id, "version": number, **store.by_id(schema_id)}


def _delete(store, subject, body):
    versions = store.delete(subject)
    return (200, versions) if versions is not None else _not_found(40401, "Subject not found")


def _get_config(store, subject=None, body=None):
    return 200, {"compatibilityLevel": store.compatibility.get(subject, store.compatibility[None])}


def _put_config(store, subject=None, body=None):
    store.compatibility[subject] = body["compatibility"].upper()
    return 200, {"compatibility": store.compatibility[subject]}


def _compatibility(store, subject, version, body):
    found = store.version(subject, version)
    if found is None:
        return _not_found(40402, "Version not found")
    return 200, {"is_compatible": backward_compatible(body["schema"], store.by_id(found[0])["schema"])}


_ROUTES: tuple[tuple[str, str, Callable[..., tuple[int, object]]], ...] = (
    ("POST", r"/subjects/([^/]+)/versions", _register),
    ("POST", r"/subjects/([^/]+)", _lookup),
    ("GET", r"/schemas/ids/(\d+)", _get_schema),
    ("GET", r"/subjects", _subjects),
    ("GET", r"/subjects/([^/]+)/versions", _versions),
    ("GET", r"/subjects/([^/]+)/versions/(latest|-1|\d+)", _version),
    ("DELETE", r"/subjects/([^/]+)", _delete),
    ("GET", r"/config", _get_config),
    ("PUT", r"/config", _put_config),
    ("GET", r"/config/([^/]+)", _get_config),
    ("PUT", r"/config/([^/]+)", _put_config),
    ("POST", r"/compatibility/subjects/([^/]+)/versions/(latest|-1|\d+)", _compatibility),
)


class SchemaRegistryDouble:
    """Runs the stand-in on a background thread: `with SchemaRegistryDouble() as registry: registry.url`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: tuple[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.store = SchemaStore()
        authorization = "Basic " + base64.b64encode(":".join(credentials).encode()).decode() if credentials else None
        handler = type("Handler", (_Handler,), {"store": self.store, "authorization": authorization})
        self._server = ThreadingHTTPServer((host, port), handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "https" if tls else "http"
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="schema-registry", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def start(self) -> SchemaRegistryDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
