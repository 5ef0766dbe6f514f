"""The few Kubernetes API calls the operator makes, with the `kubernetes` client.

Handlers are sync and kopf runs them in worker threads, so blocking calls are fine here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import urllib.parse
from importlib import metadata
from typing import Any, Callable, Optional

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from rlhf_api.names import GROUP, MANAGER, PLURAL, VERSION

from .status import ApiAnswer

log = logging.getLogger(__name__)

_PLURALS = {("ray.io/v1", "RayJob"): ("ray.io", "v1", "rayjobs"),
            ("networking.k8s.io/v1", "NetworkPolicy"): ("networking.k8s.io", "v1", "networkpolicies")}
EVENT_SOURCE = MANAGER
_INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()  # the pod name in a cluster
EVENT_MESSAGE_LIMIT = 1024
try:
    _VERSION = metadata.version("rlhf-operator")
except metadata.PackageNotFoundError:  # run from a source tree
    _VERSION = "dev"
# How the operator names itself to the API server: its requests' User-Agent (kopf's too, see
# startup.login), and the field manager of everything it writes (managedFields, server-side apply).
USER_AGENT = f"{MANAGER}/{_VERSION}"
FIELD_MANAGER = MANAGER
_WRITES = ("POST", "PUT", "PATCH")


def event_manifest(involved: dict[str, Any], type_: str, reason: str, message: str,
                   now: Optional[datetime.datetime] = None, instance: Optional[str] = None) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (its apiVersion, kind, name, namespace, uid): what
    `kubectl describe` lists under Events."""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = involved["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], **({"uid": meta["uid"]} if meta.get("uid") else {})},
        "type": type_,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": instance or _INSTANCE,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def answer_of(exc: ApiException) -> ApiAnswer:
    """The metav1.Status the API server sent with a failed request (its code alone if none)."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    return ApiAnswer(code=int(exc.status or 0), reason=str(body.get("reason") or exc.reason or ""),
                     message=str(body.get("message") or (exc.body or "")).strip(),
                     details_kind=str(details.get("kind") or ""))


def is_transient(exc: BaseException) -> bool:
    """Whether the same request may well succeed later: the API server was unreachable, slow,
    overloaded (429, 5xx), or the object changed underneath (409), or the operator's own
    credentials were refused (401: rotated tokens are reloaded; no job is at fault). Everything
    else the API server answers (400, 403, 404, 413, 422, ...) is a refusal that retrying would
    only repeat; so is a 5xx that says the object is too large (etcd's limit)."""
    if isinstance(exc, Transient):
        return True
    if isinstance(exc, ApiException):
        if not exc.status:
            return True
        if exc.status >= 500:
            return "too large" not in (exc.body or "").lower()
        return exc.status in (401, 408, 409, 429)
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class Transient(Exception):
    """A race with another writer that the next try resolves (an object gone between calls)."""


class Refused(Exception):
    """The API server refused to create a child, for a reason retrying will not change."""

    def __init__(self, obj: dict[str, Any], answer: ApiAnswer):
        self.kind, self.api_version = obj["kind"], obj["apiVersion"]
        self.name, self.namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        self.answer = answer
        super().__init__(f"{self.kind} {self.name}: {answer.code} {answer.reason}: {answer.message}")


class NotOwned(Exception):
    """A child's name is taken by an object this job does not own."""


class _ApiClient(kubernetes.client.ApiClient):
    """The kubernetes client without one defensive walk: before sending, it rebuilds every
    request body node by node to turn client model objects into plain data. The bodies the
    operator builds itself (rendered manifests, patches) are plain JSON dicts already, and the
    walk was a quarter of each call's CPU. Model objects still get the client's own conversion.
    """

    on_error: Optional[Callable[[str, int], None]] = None  # (HTTP method, code; 0: no answer), for metrics

    def sanitize_for_serialization(self, obj: Any) -> Any:
        if type(obj) is dict:
            return obj
        return _CONVERT(_PLAIN_CLIENT, obj)  # the original walk, all the way down

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        """Every write names the operator as its field manager; every failure is counted."""
        if method.upper() in _WRITES and "fieldManager=" not in url:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"fieldManager": FIELD_MANAGER})
        try:
            response = super().call_api(method, url, *args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            if self.on_error is not None:
                self.on_error(method, int(getattr(exc, "status", 0) or 0))
            raise
        if self.on_error is not None and not 200 <= response.status <= 299:
            self.on_error(method, response.status)
        return response


_CONVERT = kubernetes.client.ApiClient.sanitize_for_serialization
_PLAIN_CLIENT = object.__new__(kubernetes.client.ApiClient)  # only its conversion is used


def kube_configuration(kubeconfig: Optional[str] = None, context: Optional[str] = None) -> kubernetes.client.Configuration:
    """Where the cluster is and how to log in: the given kubeconfig (and context), else the in-cluster
    account, else $KUBECONFIG or ~/.kube/config. Raises kubernetes.config.ConfigException when none works."""
    configuration = kubernetes.client.Configuration()
    if not kubeconfig and not context:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return configuration
        except kubernetes.config.ConfigException:
            pass
    # $KUBECONFIG as it is now: the client read it once, when it was imported.
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    kubernetes.config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
    return configuration


def api_client(kubeconfig: Optional[str] = None, context: Optional[str] = None,
               on_error: Optional[Callable[[str, int], None]] = None) -> kubernetes.client.ApiClient:
    """A client for the cluster (see kube_configuration), sending the operator's User-Agent."""
    configuration = kube_configuration(kubeconfig, context)
    # Handlers run in up to OperatorConfig.max_workers threads that share this client.
    configuration.connection_pool_maxsize = 32
    client = _ApiClient(configuration)
    client.user_agent = USER_AGENT
    client.on_error = on_error
    return client


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.authz = kubernetes.client.AuthorizationV1Api(client)

    # ------------------------------------------------------------------ generic

    def _create(self, obj: dict[str, Any]) -> None:
        # _preload_content=False: the created object is not needed, and turning the response
        # into client model classes costs more CPU than the request itself.
        ns = obj["metadata"]["namespace"]
        if obj["kind"] == "ConfigMap":
            self.core.create_namespaced_config_map(ns, obj, _preload_content=False).release_conn()
            return
        group, version, plural = _PLURALS[(obj["apiVersion"], obj["kind"])]
        self.custom.create_namespaced_custom_object(group, version, ns, plural, obj, _preload_content=False).release_conn()

    def _get(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            response = self.core.read_namespaced_config_map(name, ns, _preload_content=False)
            return json.loads(response.data)
        group, version, plural = _PLURALS[(obj["apiVersion"], obj["kind"])]
        return self.custom.get_namespaced_custom_object(group, version, ns, plural, name)

    def create_or_adopt(self, obj: dict[str, Any], owner_uid: str) -> bool:
        """Create ``obj``; if its name exists and this job owns it, adopt it. True when created.

        Raises Refused when the API server refuses the create for good, NotOwned when the name
        is another's, and the API's own error (or Transient) when a later try may succeed."""
        try:
            self._create(obj)
            return True
        except ApiException as exc:
            if exc.status != 409:
                if is_transient(exc):
                    raise
                raise Refused(obj, answer_of(exc)) from exc
            if answer_of(exc).reason == "Conflict":
                raise  # not AlreadyExists: transient, retried
        try:
            existing = self._get(obj)
        except ApiException as exc:
            if exc.status == 404:  # deleted since the create said it exists
                raise Transient(f"{obj['kind']} {obj['metadata']['name']} was deleted while being adopted") from exc
            raise
        if not _owned_by(existing, owner_uid):
            raise NotOwned(f"{obj['kind']} {obj['metadata']['name']!r} already exists and is not owned by this RLHFJob;"
                           " delete it or rename the RLHFJob")
        return False

    def delete(self, obj: dict[str, Any]) -> None:
        """Delete a child the operator created (gone already is fine)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            if obj["kind"] == "ConfigMap":
                self.core.delete_namespaced_config_map(name, ns, _preload_content=False).release_conn()
                return
            group, version, plural = _PLURALS[(obj["apiVersion"], obj["kind"])]
            self.custom.delete_namespaced_custom_object(group, version, ns, plural, name,
                                                        _preload_content=False).release_conn()
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------ reads

    def configmap_data(self, namespace: str, name: str) -> Optional[dict[str, str]]:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def rlhfjob(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def rayjob(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def may_read_secret(self, user: dict[str, Any], namespace: str, name: str) -> tuple[bool, str]:
        """Ask the API server (a SubjectAccessReview) whether ``user``, an admission request's
        userInfo, may `get` the Secret; returns (allowed, the authorizer's reason)."""
        return self.may(user, {"namespace": namespace, "verb": "get", "group": "", "resource": "secrets", "name": name})

    def may_request_token(self, user: dict[str, Any], namespace: str, service_account: str) -> tuple[bool, str]:
        """Whether ``user`` may get an API token of the service account (`create` serviceaccounts/token)."""
        return self.may(user, {"namespace": namespace, "verb": "create", "group": "", "resource": "serviceaccounts",
                               "subresource": "token", "name": service_account})

    def may(self, user: dict[str, Any], attributes: dict[str, str]) -> tuple[bool, str]:
        """One SubjectAccessReview of ``attributes`` for ``user``; returns (allowed, the authorizer's reason)."""
        spec: dict[str, Any] = {"resourceAttributes": attributes}
        for ours, theirs in (("username", "user"), ("uid", "uid"), ("groups", "groups"), ("extra", "extra")):
            if user.get(ours):
                spec[theirs] = user[ours]
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        response = self.authz.create_subject_access_review(body, _preload_content=False)
        status = json.loads(response.data).get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, str(status.get("reason") or status.get("evaluationError") or "")

    # ------------------------------------------------------------------ writes

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event; a failure is logged, never raised: the story is secondary to the work."""
        body = event_manifest(involved, type_, reason, message)
        try:
            self.core.create_namespaced_event(body["metadata"]["namespace"], body,
                                              _preload_content=False).release_conn()
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not post event %s about %s/%s: %s", reason, body["metadata"]["namespace"],
                        body["involvedObject"]["name"], exc)

    def patch_rayjob(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name, patch)

    def update_rlhfjob_status(self, namespace: str, name: str,
                              change: Callable[[dict[str, Any]], Optional[dict[str, Any]]],
                              attempts: int = 5, known: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
        """Compute a status patch from the job and write it guarded by resourceVersion.

        ``change(job)`` returns the status fields to merge (or None for no write). The first
        try works from ``known`` (the object a handler was given) when there is one, saving a
        read; a conflict (someone wrote in between) re-reads and recomputes. Returns the job
        the written patch was computed from.
        """
        job = known
        for _ in range(attempts):
            if job is None:
                job = self.rlhfjob(namespace, name)
                if job is None:
                    return None
            fields = change(job)
            if not fields:
                return job
            body = {"metadata": {"resourceVersion": job["metadata"]["resourceVersion"]}, "status": fields}
            try:
                # The patched object is not needed: skip turning the response into Python objects.
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body,
                                                                  _preload_content=False).release_conn()
                return job
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise
                log.debug("status of %s/%s changed underneath; retrying", namespace, name)
            job = None
        raise RuntimeError(f"could not update the status of RLHFJob {namespace}/{name}: too many conflicts")
