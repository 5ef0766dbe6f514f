"""
The HTTP layer: KMock's server and request handler, answering with the API semantics of
:class:`~.store.ObjectStore`.

KMock provides the aiohttp server on a free local port, parsing into :class:`kmock.Request`,
request recording for assertions, and the ``<<`` DSL for user-defined reactions, which go
first here (``handler['patch', kmock.resource(...)] << 500``). Seeded, counted fault injection
(Status answers, connection resets before or after the write, delays) is :mod:`.faults`,
consulted before anything else. What it lacks
for kopf, the ``kubernetes`` client and kubectl is filled in below: ``Status`` errors with
real codes, list pagination and server-side printing (``Table``), ``dryRun=All``, apply
patches, and watches that honour ``?resourceVersion=`` and ``sendInitialEvents``. Every
response carries ``Connection: close``: KMock races when a keep-alive connection is reused.
Protobuf is not spoken (415).
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import traceback
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering as _kmock_rendering

from . import discovery
from .common import Obj, dumps
from .errors import ApiError
from .faults import FaultInjector, FaultRule
from .resources import ApiResource
from .routes import Route, parse_route, truthy
from .store import ObjectStore

logger = logging.getLogger(__name__)

PATCH_TYPES = {
    'application/merge-patch+json': 'merge',
    'application/json-patch+json': 'json',
    'application/strategic-merge-patch+json': 'strategic',
    'application/apply-patch+yaml': 'apply',
    'application/apply-patch+json': 'apply',
}


def _json_response(data: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=dumps(data), status=status, content_type='application/json')


@attrs.define(kw_only=True)
class EmulatorHandler(kmock.RawHandler):
    """
    KMock's raw handler with the Kubernetes API semantics of :class:`ObjectStore`.

    User-defined KMock reactions (``handler['patch', kmock.resource(...)] << 500``)
    take priority over the emulated API, which makes fault injection easy.
    """
    store: ObjectStore
    server_version: Mapping[str, str] = attrs.field(factory=lambda: {
        'major': '1', 'minor': '32', 'gitVersion': 'v1.32.0-kmock', 'gitCommit': '0' * 40,
        'gitTreeState': 'clean', 'buildDate': '2025-01-01T00:00:00Z', 'goVersion': 'go1.23',
        'compiler': 'gc', 'platform': 'linux/amd64',
    })
    record_requests: bool = True
    faults: FaultInjector = attrs.field(factory=FaultInjector)  # see faults.py
    watch_poll_interval: float = 1.0  # how often idle watches check for closed client connections

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        response: aiohttp.web.StreamResponse
        try:
            route = parse_route(raw_request.path)
            request = self._make_request(raw_request, route, body)
            if self.record_requests:
                self._requests.append(request)
            fault = self.faults.pick(raw_request.method, raw_request.path)
            if fault is None:
                response = await self._dispatch(request, route)
            else:
                response = await self._faulty(fault, raw_request, request, route)
        except ApiError as e:
            response = _json_response(e.status(), e.code)
        except _kmock_rendering.StreamingError as e:  # a user-defined KMock stream failed midway
            response = e.args[0]
        except Exception as e:  # noqa: BLE001
            logger.exception('Emulator failure on %s %s', raw_request.method, raw_request.path_qs)
            if self._errors:
                self._errors[-1].append(e)
            status = ApiError(500, 'InternalError', f'{type(e).__name__}: {e}',
                              {'causes': [{'message': traceback.format_exc()}]}).status()
            response = _json_response(status, 500)
        if not response.prepared:
            response.force_close()  # "Connection: close": no keep-alive reuse races
        return response

    async def _faulty(self, fault: FaultRule, raw: aiohttp.web.BaseRequest, request: kmock.Request,
                      route: Route) -> aiohttp.web.StreamResponse:
        """Serve a request that a fault rule picked (see faults.py)."""
        if fault.action == 'delay':
            await asyncio.sleep(fault.delay)
            return await self._dispatch(request, route)
        if fault.action == 'status':
            status, headers = fault.status(raw.path)
            response = _json_response(status, fault.code)
            response.headers.update(headers)
            return response
        if fault.action == 'reset-after':
            try:
                await self._dispatch(request, route)  # the write happens; its answer is lost
            except ApiError:
                pass
        assert raw.transport is not None
        raw.transport.abort()  # the client sees the connection reset, with no answer
        return aiohttp.web.Response(status=500)  # written nowhere: aiohttp drops it on the closed transport

    def _make_request(self, raw: aiohttp.web.BaseRequest, route: Route, body: bytes) -> kmock.Request:
        params = dict(raw.query)
        data: Any = None
        if body and 'protobuf' not in (raw.content_type or ''):
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        action: kmock.action | None = None
        resource = None
        if route.kind == 'resource':
            resource = kmock.resource(route.group, route.version, route.plural)
            if raw.method == 'GET':
                action = (kmock.action.WATCH if route.watch_prefix or truthy(params.get('watch')) else
                          kmock.action.LIST if route.name is None else kmock.action.FETCH)
            elif raw.method == 'POST' and route.name is None:
                action = kmock.action.CREATE
            elif raw.method in ('PATCH', 'PUT') and route.name is not None:
                action = kmock.action.UPDATE
            elif raw.method == 'DELETE':
                action = kmock.action.DELETE
        return kmock.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method,
            params=params, headers=dict(raw.headers), cookies=dict(raw.cookies),
            body=body, text=body.decode('utf-8', errors='replace'), data=data,
            action=action, resource=resource, namespace=route.namespace, name=route.name,
            subresource=route.subresource,
        )

    async def _dispatch(self, request: kmock.Request, route: Route) -> aiohttp.web.StreamResponse:
        if self._payloads:  # user-defined KMock reactions go first
            try:
                return await kmock.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        raw = request._raw_request
        assert raw is not None
        method = raw.method
        if route.kind == 'resource':
            return await self._serve_resource(request, route, raw)
        if method != 'GET':
            raise ApiError(405, 'MethodNotAllowed', f'the server does not allow this method on {raw.path}')
        resources = self.store.resources()
        if route.kind == 'root':
            return _json_response({'paths': discovery.root_paths(resources)})
        if route.kind == 'version':
            return _json_response(dict(self.server_version))
        if route.kind == 'api':
            return _json_response(discovery.core_versions(f'{raw.host}'))
        if route.kind == 'apis':
            return _json_response({'kind': 'APIGroupList', 'apiVersion': 'v1', 'groups': discovery.groups(resources)})
        if route.kind == 'group':
            for group in discovery.groups(resources):
                if group['name'] == route.group:
                    return _json_response(dict(group, kind='APIGroup', apiVersion='v1'))
            raise ApiError.not_found(None)
        if route.kind == 'groupversion':
            return _json_response(discovery.resource_list(resources, route.group, route.version))
        if raw.path in ('/healthz', '/livez', '/readyz'):
            return aiohttp.web.Response(text='ok')
        if raw.path == '/openapi/v3':
            return _json_response(discovery.openapi_v3_index(resources))
        if raw.path.startswith('/openapi/v3/'):
            return _json_response(discovery.openapi_v3_doc(resources, raw.path[len('/openapi/v3/'):]))
        raise ApiError.not_found(None)  # incl. /openapi/v2 (protobuf-only in reality)

    # --- resources: one method per HTTP verb ---

    async def _serve_resource(self, request: kmock.Request, route: Route,
                              raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        res = self.store.resource(route.group, route.version, route.plural or '')
        if res is None:
            raise ApiError.not_found(None)
        if route.namespace is not None and not res.namespaced:
            raise ApiError.not_found(None)
        namespace = route.namespace if res.namespaced else None
        dry_run = request.params.get('dryRun') == 'All'

        if route.subresource not in (None, 'status') or (route.subresource == 'status' and not res.status):
            raise ApiError.not_found(None)
        if route.name is not None and res.namespaced and namespace is None:
            raise ApiError.not_found(None)

        if raw.method == 'GET':
            return await self._get(request, route, raw, res, namespace)
        if raw.method == 'POST':
            return self._post(request, route, raw, res, namespace, dry_run)
        if raw.method == 'PUT':
            return self._put(request, route, raw, res, namespace, dry_run)
        if raw.method == 'PATCH':
            return self._patch(request, route, raw, res, namespace, dry_run)
        if raw.method == 'DELETE':
            return self._delete(request, route, res, namespace, dry_run)
        raise ApiError(405, 'MethodNotAllowed', f'{raw.method} is not supported')

    async def _get(self, request: kmock.Request, route: Route, raw: aiohttp.web.BaseRequest,
                   res: ApiResource, namespace: str | None) -> aiohttp.web.StreamResponse:
        params = request.params
        if route.watch_prefix or truthy(params.get('watch')):
            field_selector = params.get('fieldSelector')
            if route.name is not None:  # /watch/.../name (legacy)
                extra = f'metadata.name={route.name}'
                field_selector = f'{field_selector},{extra}' if field_selector else extra
            return await self._serve_watch(request, res, namespace, raw, field_selector)
        if route.name is None:
            return self._serve_list(request, res, namespace)
        return self._render_object(raw, res, self.store.get_raw(res, namespace, route.name))

    def _post(self, request: kmock.Request, route: Route, raw: aiohttp.web.BaseRequest,
              res: ApiResource, namespace: str | None, dry_run: bool) -> aiohttp.web.Response:
        if route.name is not None:
            raise ApiError(405, 'MethodNotAllowed', f'POST is not supported on {raw.path}')
        if res.namespaced and namespace is None:
            raise ApiError.not_found(None)
        obj = self.store.create(res, self._body(raw, request), namespace, dry_run=dry_run)
        return _json_response(obj, 201)

    def _put(self, request: kmock.Request, route: Route, raw: aiohttp.web.BaseRequest,
             res: ApiResource, namespace: str | None, dry_run: bool) -> aiohttp.web.Response:
        if route.name is None:
            raise ApiError(405, 'MethodNotAllowed', f'PUT is not supported on {raw.path}')
        obj = self.store.replace(res, namespace, route.name, self._body(raw, request),
                                 subresource=route.subresource, dry_run=dry_run)
        return _json_response(obj)

    def _patch(self, request: kmock.Request, route: Route, raw: aiohttp.web.BaseRequest,
               res: ApiResource, namespace: str | None, dry_run: bool) -> aiohttp.web.Response:
        if route.name is None:
            raise ApiError(405, 'MethodNotAllowed', f'PATCH is not supported on {raw.path}')
        ctype = (raw.content_type or '').lower()
        patch_type = PATCH_TYPES.get(ctype)
        if patch_type is None:
            raise ApiError(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format'
                                                        f' - accepted media types include: application/'
                                                        f'json-patch+json, application/merge-patch+json,'
                                                        f' application/apply-patch+yaml (got {ctype!r})')
        patch = self._body(raw, request, yaml_ok=(patch_type == 'apply'))
        if patch_type == 'json' and not isinstance(patch, list):
            raise ApiError.bad_request(
                'json: cannot unmarshal object into Go value of type jsonpatch.Patch'
                ' (a JSON patch must be a list of operations; with the kubernetes client, pass'
                ' _content_type="application/merge-patch+json" to merge-patch with a dict)')
        if patch_type != 'apply':
            obj = self.store.patch(res, namespace, route.name, patch, patch_type,
                                   subresource=route.subresource, dry_run=dry_run)
            return _json_response(obj)
        try:
            obj = self.store.patch(res, namespace, route.name, patch, 'apply',
                                   subresource=route.subresource, dry_run=dry_run)
        except ApiError as e:
            if e.code != 404 or route.subresource:
                raise
            obj = self.store.create(res, dict(patch, metadata=dict(patch.get('metadata') or {}, name=route.name)),
                                    namespace, dry_run=dry_run)
            return _json_response(obj, 201)
        return _json_response(obj)

    def _delete(self, request: kmock.Request, route: Route, res: ApiResource, namespace: str | None,
                dry_run: bool) -> aiohttp.web.Response:
        store, params = self.store, request.params
        options = request.data if isinstance(request.data, dict) else {}
        dry_run = dry_run or 'All' in (options.get('dryRun') or [])
        if route.name is None:  # deletecollection
            items, _ = store.list(res, namespace, label_selector=params.get('labelSelector'),
                                  field_selector=params.get('fieldSelector'), copy_items=False)
            deleted = []
            for item in items:
                try:
                    obj, _ = store.delete(res, item['metadata'].get('namespace'), item['metadata']['name'],
                                          dry_run=dry_run)
                    deleted.append(obj)
                except ApiError:
                    pass
            return _json_response({'kind': res.list_kind, 'apiVersion': res.api_version,
                                   'metadata': {'resourceVersion': str(store.resource_version)},
                                   'items': deleted})
        obj, gone = store.delete(res, namespace, route.name, preconditions=options.get('preconditions'),
                                 dry_run=dry_run)
        if gone and not res.group:  # core resources answer with a Status; CRs with the object
            return _json_response({'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success',
                                   'details': {'name': route.name, 'kind': res.plural,
                                               'uid': obj['metadata'].get('uid')}})
        return _json_response(obj)

    @staticmethod
    def _body(raw: aiohttp.web.BaseRequest, request: kmock.Request, *, yaml_ok: bool = False) -> Any:
        ctype = (raw.content_type or '').lower()
        if 'protobuf' in ctype:
            raise ApiError(415, 'UnsupportedMediaType',
                           'the emulator does not speak protobuf; use JSON (e.g. kubectl create ... '
                           '--dry-run=client -o yaml | kubectl apply -f -)')
        if request.data is not None:
            return request.data
        if not request.body:
            raise ApiError.bad_request('the request body is empty')
        if yaml_ok or 'yaml' in ctype:
            try:
                return yaml.safe_load(request.body)
            except yaml.YAMLError as e:
                raise ApiError.bad_request(f'invalid YAML: {e}') from None
        raise ApiError.bad_request('the body of the request is not valid JSON')

    def _serve_list(self, request: kmock.Request, res: ApiResource, namespace: str | None) -> aiohttp.web.Response:
        params = request.params
        items, rv = self.store.list(res, namespace, label_selector=params.get('labelSelector'),
                                    field_selector=params.get('fieldSelector'), copy_items=False)
        meta: Obj = {'resourceVersion': str(rv)}
        limit = int(params['limit']) if params.get('limit', '').isdigit() and int(params['limit']) > 0 else None
        token = params.get('continue')
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (state['ns'], state['name'])
                rv = int(state['rv'])
            except (ValueError, KeyError, TypeError):
                raise ApiError.bad_request('invalid continue token') from None
            meta['resourceVersion'] = str(rv)
            items = [o for o in items if (o['metadata'].get('namespace') or '', o['metadata']['name']) > after]
        if limit is not None and len(items) > limit:
            items = items[:limit]
            last = items[-1]['metadata']
            state = {'rv': rv, 'ns': last.get('namespace') or '', 'name': last['name']}
            meta['continue'] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta['remainingItemCount'] = 0  # not exact; informative only
        accept = request.headers.get('Accept', '')
        if 'as=Table' in accept:
            return _json_response(self._table(res, items, meta))
        return _json_response({'kind': res.list_kind, 'apiVersion': res.api_version, 'metadata': meta,
                               'items': items})

    def _render_object(self, raw: aiohttp.web.BaseRequest, res: ApiResource, obj: Obj) -> aiohttp.web.Response:
        if 'as=Table' in raw.headers.get('Accept', ''):
            return _json_response(self._table(res, [obj], {'resourceVersion': obj['metadata']['resourceVersion']}))
        return _json_response(obj)

    @staticmethod
    def _table(res: ApiResource, items: list[Obj], meta: Obj) -> Obj:
        """Server-side printing for ``kubectl get`` (NAME, [STATUS/PHASE], AGE)."""
        columns = [
            {'name': 'Name', 'type': 'string', 'format': 'name', 'description': 'Name', 'priority': 0},
            {'name': 'Age', 'type': 'string', 'format': '', 'description': 'Age', 'priority': 0},
        ]
        now = datetime.datetime.now(datetime.timezone.utc)
        rows = []
        for obj in items:
            created = obj['metadata'].get('creationTimestamp')
            age = '<unknown>'
            if created:
                secs = int((now - datetime.datetime.strptime(created, '%Y-%m-%dT%H:%M:%SZ').replace(
                    tzinfo=datetime.timezone.utc)).total_seconds())
                age = f'{secs}s' if secs < 120 else f'{secs // 60}m' if secs < 7200 else f'{secs // 3600}h'
            rows.append({'cells': [obj['metadata']['name'], age], 'object': {
                'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': obj['metadata']}})
        return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1', 'metadata': meta,
                'columnDefinitions': columns, 'rows': rows}

    async def _serve_watch(self, request: kmock.Request, res: ApiResource, namespace: str | None,
                           raw: aiohttp.web.BaseRequest, field_selector: str | None) -> aiohttp.web.StreamResponse:
        params = request.params
        store = self.store
        send_initial = truthy(params.get('sendInitialEvents'))
        timeout: float | None = None
        if params.get('timeoutSeconds', '').isdigit() and int(params['timeoutSeconds']) > 0:
            timeout = float(params['timeoutSeconds'])
        response = aiohttp.web.StreamResponse(status=200)
        response.content_type = 'application/json'
        response.enable_chunked_encoding()
        response.force_close()
        try:
            watcher, initial, rv = store.open_watch(
                res, namespace, resource_version=params.get('resourceVersion'),
                label_selector=params.get('labelSelector'), field_selector=field_selector,
                send_initial_events=send_initial)
        except ApiError as e:
            if e.code != 410:
                raise
            await response.prepare(raw)  # as the apiserver: 200, then an ERROR event
            await response.write(dumps({'type': 'ERROR', 'object': e.status()}) + b'\n')
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            await response.prepare(raw)
            chunk = b''.join(dumps({'type': 'ADDED', 'object': obj}) + b'\n' for obj in initial)
            if send_initial:
                chunk += dumps({'type': 'BOOKMARK', 'object': {
                    'kind': res.kind, 'apiVersion': res.api_version,
                    'metadata': {'resourceVersion': str(rv),
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}}) + b'\n'
            if chunk:
                await response.write(chunk)
            while not store.closed:
                watcher.wakeup.clear()
                lines = store.read_watch(watcher)
                if lines is None:  # fell behind the event log retention
                    error = ApiError.gone('too old resource version: the watch fell behind')
                    await response.write(dumps({'type': 'ERROR', 'object': error.status()}) + b'\n')
                    break
                if lines:
                    await response.write(b''.join(lines))
                    continue
                wait = self.watch_poll_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    await asyncio.wait_for(watcher.wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    transport = raw.transport
                    if transport is None or transport.is_closing():
                        break  # the client has gone
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client disconnected or the server is stopping
        finally:
            store.close_watch(watcher)
        return response


class EmulatorServer(kmock.Server):
    """:class:`kmock.Server` that tolerates non-LIFO shutdowns of several servers in one process."""

    async def __aexit__(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        interceptor = self._managed_interceptor
        if interceptor is not None and aiohttp.connector.TCPConnector._resolve_host is not \
                interceptor._own_resolver:  # type: ignore[attr-defined]
            # Another server's resolver wraps ours; ours only maps this host:port to itself,
            # so it can harmlessly stay in the chain. Skip its removal instead of failing.
            interceptor._cascaded_resolver = None
            self._managed_interceptor = _NoopInterceptor()  # type: ignore[assignment]
        await super().__aexit__(exc_type, exc_value, tb)


class _NoopInterceptor:
    async def __aexit__(self, *args: Any) -> None:
        pass

