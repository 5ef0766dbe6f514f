"""
The KMock-based Kubernetes API emulator behaves like a real apiserver for
the real ``kubernetes`` client, the real kopf runtime, and the real kubectl.
"""
import json
import pathlib
import subprocess
import threading
import time
import urllib.request

import kmock
import kopf
import kubernetes.client
import pytest
import urllib3
from kubernetes import watch
from kubernetes.client.rest import ApiException

from support.fixtures import kopf_runner, kube  # noqa: F401  (fixtures; tests/conftest.py puts tests/ on sys.path)
from support.emulator import (
    KUBECTL, KubeEmulator, apply_json_patch, apply_merge_patch, apply_strategic_merge_patch,
    parse_label_selector, wait_for,
)

pytestmark = pytest.mark.timeout(60)

GROUP, VERSION, PLURAL = 'rlhf.dev', 'v1alpha1', 'rlhfjobs'
MERGE = 'application/merge-patch+json'
JSON_PATCH = 'application/json-patch+json'


def _json(kube: KubeEmulator, path: str) -> dict:
    with urllib.request.urlopen(kube.url + path, timeout=5) as rsp:
        assert rsp.headers['Connection'] == 'close'
        return json.loads(rsp.read())


def _reason(e: ApiException) -> str:
    return json.loads(e.body)['reason']


def _job(name: str, namespace: str = 'ns1', **spec: object) -> dict:
    return {'apiVersion': f'{GROUP}/{VERSION}', 'kind': 'RLHFJob',
            'metadata': {'name': name, 'namespace': namespace}, 'spec': dict(spec or {'model': 'gpt2'})}


@pytest.fixture
def core(kube: KubeEmulator) -> kubernetes.client.CoreV1Api:
    kube.create_namespace('ns1')
    return kubernetes.client.CoreV1Api(kube.api_client())


@pytest.fixture
def custom(kube: KubeEmulator) -> kubernetes.client.CustomObjectsApi:
    kube.create_namespace('ns1')
    return kubernetes.client.CustomObjectsApi(kube.api_client())


# --- discovery ---------------------------------------------------------------------------------

def test_discovery(kube: KubeEmulator) -> None:
    assert _json(kube, '/api')['versions'] == ['v1']
    core_v1 = _json(kube, '/api/v1')
    assert core_v1['groupVersion'] == 'v1'
    names = {r['name'] for r in core_v1['resources']}
    assert {'namespaces', 'configmaps', 'secrets', 'services', 'events', 'pods'} <= names
    groups = {g['name']: g for g in _json(kube, '/apis')['groups']}
    assert {'rlhf.dev', 'ray.io', 'coordination.k8s.io', 'kopf.dev', 'apiextensions.k8s.io'} <= set(groups)
    rlhf = _json(kube, '/apis/rlhf.dev/v1alpha1')
    assert {r['name']: r['namespaced'] for r in rlhf['resources']} == {'rlhfjobs': True, 'rlhfjobs/status': True}
    assert {'rayjobs', 'rayclusters'} <= {r['name'] for r in _json(kube, '/apis/ray.io/v1')['resources']}
    assert _json(kube, '/api/v1/namespaces')['kind'] == 'NamespaceList'  # stock KMock: 500


def test_registered_resource_is_discoverable_and_has_a_crd(kube: KubeEmulator) -> None:
    kube.register_resource('example.com', 'v1beta1', 'widgets', 'Widget', namespaced=False, status=False)
    resources = _json(kube, '/apis/example.com/v1beta1')['resources']
    assert resources == [{'name': 'widgets', 'singularName': 'widget', 'namespaced': False, 'kind': 'Widget',
                          'verbs': ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update',
                                    'watch']}]
    assert kube.get('customresourcedefinitions', 'widgets.example.com')['spec']['scope'] == 'Cluster'
    created = kube.create({'apiVersion': 'example.com/v1beta1', 'kind': 'Widget', 'metadata': {'name': 'w'},
                           'status': {'kept': True}})
    assert created['status'] == {'kept': True}  # no status subresource: status is a normal field
    assert 'namespace' not in created['metadata']


# --- CRUD, metadata, errors --------------------------------------------------------------------

def test_create_get_list_assign_metadata(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map('ns1', {'metadata': {'name': 'cm1', 'labels': {'a': 'x'}},
                                                       'data': {'k': 'v'}})
    assert created.metadata.uid and created.metadata.creation_timestamp
    rv1 = int(created.metadata.resource_version)
    generated = core.create_namespaced_config_map('ns1', {'metadata': {'generateName': 'gen-'}})
    assert generated.metadata.name.startswith('gen-') and len(generated.metadata.name) == 9
    assert int(generated.metadata.resource_version) > rv1

    fetched = core.read_namespaced_config_map('cm1', 'ns1')
    assert fetched.data == {'k': 'v'} and fetched.metadata.uid == created.metadata.uid

    listed = core.list_namespaced_config_map('ns1')
    assert listed.kind == 'ConfigMapList' and listed.api_version == 'v1'
    assert int(listed.metadata.resource_version) >= int(generated.metadata.resource_version)
    assert sorted(i.metadata.name for i in listed.items) == sorted(['cm1', generated.metadata.name])
    assert [i.metadata.name for i in core.list_namespaced_config_map('ns1', label_selector='a in (x,y)').items] \
        == ['cm1']
    assert len(core.list_config_map_for_all_namespaces(field_selector='metadata.name=cm1').items) == 1


def test_list_pagination(core: kubernetes.client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_config_map('ns1', {'metadata': {'name': f'cm{i}'}})
    page1 = core.list_namespaced_config_map('ns1', limit=3)
    page2 = core.list_namespaced_config_map('ns1', limit=3, _continue=page1.metadata._continue)
    assert [i.metadata.name for i in page1.items + page2.items] == [f'cm{i}' for i in range(5)]
    assert page2.metadata._continue is None


def test_errors_are_status_objects_with_real_codes(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'cm1'}})
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map('ns1', {'metadata': {'name': 'cm1'}})
    assert e.value.status == 409 and _reason(e.value) == 'AlreadyExists'
    for call in [lambda: core.read_namespaced_config_map('nope', 'ns1'),
                 lambda: core.patch_namespaced_config_map('nope', 'ns1', {'data': {}}, _content_type=MERGE),
                 lambda: core.delete_namespaced_config_map('nope', 'ns1')]:
        with pytest.raises(ApiException) as e:
            call()
        assert e.value.status == 404 and _reason(e.value) == 'NotFound'
        assert json.loads(e.value.body)['details']['name'] == 'nope'
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map('missing-ns', {'metadata': {'name': 'cm1'}})
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map('ns1', {'metadata': {'name': 'Bad_Name'}})
    assert e.value.status == 422 and _reason(e.value) == 'Invalid'
    with pytest.raises(ApiException) as e:  # a stale resourceVersion in an update
        core.replace_namespaced_config_map('cm1', 'ns1', {'metadata': {'name': 'cm1', 'resourceVersion': '1'}})
    assert e.value.status == 409 and _reason(e.value) == 'Conflict'


def test_json_patch_test_failure_is_422(custom: kubernetes.client.CustomObjectsApi) -> None:
    job = custom.create_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, _job('j1'))
    rv = job['metadata']['resourceVersion']
    add_finalizer = {'op': 'add', 'path': '/metadata/finalizers', 'value': ['x/y']}
    with pytest.raises(ApiException) as e:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, 'ns1', PLURAL, 'j1', _content_type=JSON_PATCH,
            body=[{'op': 'test', 'path': '/metadata/resourceVersion', 'value': '999'}, add_finalizer])
    assert e.value.status == 422 and _reason(e.value) == 'Invalid'
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, 'ns1', PLURAL, 'j1', _content_type=JSON_PATCH,
        body=[{'op': 'test', 'path': '/metadata/resourceVersion', 'value': rv}, add_finalizer])
    assert patched['metadata']['finalizers'] == ['x/y']
    assert int(patched['metadata']['resourceVersion']) > int(rv)


def test_status_subresource_generation_and_noop_writes(custom: kubernetes.client.CustomObjectsApi) -> None:
    job = custom.create_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL,
                                                 dict(_job('j1'), status={'phase': 'Fake'}))
    assert 'status' not in job and job['metadata']['generation'] == 1  # status dropped on create

    job = custom.patch_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1',
                                                {'spec': {'model': 'llama'}, 'status': {'phase': 'Ignored'}})
    assert job['spec']['model'] == 'llama' and 'status' not in job and job['metadata']['generation'] == 2

    job = custom.patch_namespaced_custom_object_status(GROUP, VERSION, 'ns1', PLURAL, 'j1',
                                                       {'status': {'phase': 'Running'}, 'spec': {'model': 'no'}})
    assert job['status'] == {'phase': 'Running'} and job['spec']['model'] == 'llama'
    assert job['metadata']['generation'] == 2  # status changes do not bump the generation

    same = custom.patch_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1', {'spec': {'model': 'llama'}})
    assert same['metadata']['resourceVersion'] == job['metadata']['resourceVersion']  # no-op: no bump

    job = custom.patch_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1',
                                                {'metadata': {'labels': {'x': 'y'}}})
    assert job['metadata']['generation'] == 2  # metadata changes do not bump the generation
    assert int(job['metadata']['resourceVersion']) > int(same['metadata']['resourceVersion'])


def test_finalizers_block_deletion(custom: kubernetes.client.CustomObjectsApi, kube: KubeEmulator) -> None:
    job = _job('j1')
    job['metadata']['finalizers'] = ['example.com/block']
    custom.create_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, job)
    deleting = custom.delete_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1')
    assert deleting['metadata']['deletionTimestamp']
    assert kube.get(PLURAL, 'j1', 'ns1') is not None
    with pytest.raises(ApiException) as e:
        custom.patch_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1',
                                              {'metadata': {'finalizers': ['example.com/block', 'new/one']}})
    assert e.value.status == 422
    custom.patch_namespaced_custom_object(GROUP, VERSION, 'ns1', PLURAL, 'j1', {'metadata': {'finalizers': None}})
    assert kube.get(PLURAL, 'j1', 'ns1') is None


def test_no_garbage_collection_unless_asked(kube: KubeEmulator) -> None:
    kube.create_namespace('ns1')
    owner = kube.create(_job('j1'))
    ref = {'apiVersion': owner['apiVersion'], 'kind': owner['kind'], 'name': 'j1', 'uid': owner['metadata']['uid']}
    kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap',
                 'metadata': {'name': 'child', 'namespace': 'ns1', 'ownerReferences': [ref]}})
    kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap',
                 'metadata': {'name': 'grandchild', 'namespace': 'ns1', 'ownerReferences': [
                     {'apiVersion': 'v1', 'kind': 'ConfigMap', 'name': 'child',
                      'uid': kube.get('configmaps', 'child', 'ns1')['metadata']['uid']}]}})
    kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'orphan', 'namespace': 'ns1'}})
    assert kube.delete(PLURAL, 'j1', 'ns1') is True
    assert kube.get('configmaps', 'child', 'ns1') is not None  # no real GC
    assert sorted(name for _, _, name in kube.collect_garbage()) == ['child', 'grandchild']
    assert [cm['metadata']['name'] for cm in kube.list('configmaps', 'ns1')] == ['orphan']


# --- watching ----------------------------------------------------------------------------------

def _collect(stream: watch.Watch, gen: object, count: int) -> list[tuple[str, str, int]]:
    events = []
    for event in gen:  # type: ignore[attr-defined]
        obj = event['raw_object']
        events.append((event['type'], obj['metadata']['name'], int(obj['metadata']['resourceVersion'])))
        if len(events) >= count:
            stream.stop()
    return events


def test_watch_from_resource_version_loses_nothing(core: kubernetes.client.CoreV1Api, kube: KubeEmulator) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'before'}})
    listed_rv = core.list_namespaced_config_map('ns1').metadata.resource_version
    expected: list[tuple[str, str, int]] = []
    started = threading.Event()

    def writer() -> None:  # writes race with the watch's connection & streaming
        started.wait(5)
        for i in range(60):
            cm = kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap',
                              'metadata': {'name': f'cm{i}', 'namespace': 'ns1'}})
            expected.append(('ADDED', f'cm{i}', int(cm['metadata']['resourceVersion'])))
            cm = kube.patch('configmaps', f'cm{i}', {'data': {'i': str(i)}}, 'ns1')
            expected.append(('MODIFIED', f'cm{i}', int(cm['metadata']['resourceVersion'])))
            if i % 3 == 0:
                kube.delete('configmaps', f'cm{i}', 'ns1')
                expected.append(('DELETED', f'cm{i}', kube.store.resource_version))

    thread = threading.Thread(target=writer)
    thread.start()
    started.set()
    w = watch.Watch()
    seen = _collect(w, w.stream(core.list_namespaced_config_map, 'ns1', resource_version=listed_rv,
                                timeout_seconds=10), 140)
    thread.join()
    assert seen == expected  # every event, in order, with the resourceVersions of the writes

    # Resuming from an intermediate resourceVersion yields exactly the later events (as kopf does).
    mid = expected[69][2]
    w = watch.Watch()
    assert _collect(w, w.stream(core.list_namespaced_config_map, 'ns1', resource_version=str(mid),
                                timeout_seconds=5), 70) == expected[70:]

    # Without a resourceVersion: the current state as ADDED, then live events.
    w = watch.Watch()
    gen = w.stream(core.list_namespaced_config_map, 'ns1', timeout_seconds=5)
    initial = [next(gen) for _ in range(41)]
    assert {e['type'] for e in initial} == {'ADDED'}
    assert sorted(e['object'].metadata.name for e in initial) == sorted(
        ['before'] + [f'cm{i}' for i in range(60) if i % 3])
    kube.patch('configmaps', 'before', {'data': {'x': 'y'}}, 'ns1')
    live = next(gen)
    assert (live['type'], live['object'].metadata.name) == ('MODIFIED', 'before')
    w.stop()


def test_watch_with_label_selector_tracks_membership(core: kubernetes.client.CoreV1Api,
                                                     kube: KubeEmulator) -> None:
    rv = core.list_namespaced_config_map('ns1').metadata.resource_version
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'a', 'labels': {'app': 'x'}}})
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'b'}})
    kube.patch('configmaps', 'b', {'metadata': {'labels': {'app': 'x'}}}, 'ns1')
    kube.patch('configmaps', 'a', {'metadata': {'labels': {'app': None}}}, 'ns1')
    w = watch.Watch()
    seen = _collect(w, w.stream(core.list_namespaced_config_map, 'ns1', resource_version=rv,
                                label_selector='app=x', timeout_seconds=5), 3)
    assert [(t, n) for t, n, _ in seen] == [('ADDED', 'a'), ('ADDED', 'b'), ('DELETED', 'a')]


def test_watch_of_compacted_history_is_410() -> None:
    with KubeEmulator(event_retention=5) as kube:
        kube.create_namespace('ns1')
        for i in range(12):
            kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': f'c{i}', 'namespace': 'ns1'}})
        core = kubernetes.client.CoreV1Api(kube.api_client())
        w = watch.Watch()
        with pytest.raises(ApiException) as e:
            list(w.stream(core.list_namespaced_config_map, 'ns1', resource_version='1', timeout_seconds=2))
        assert e.value.status == 410


def test_watch_server_timeout_and_many_objects_are_fast(kube: KubeEmulator) -> None:
    kube.create_namespace('ns1')
    started = time.monotonic()
    for i in range(1000):
        kube.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': f'c{i}', 'namespace': 'ns1'},
                     'data': {'i': str(i)}})
    for i in range(1000):
        kube.patch('configmaps', f'c{i}', {'data': {'j': str(i)}}, 'ns1')
    with urllib.request.urlopen(kube.url + '/api/v1/namespaces/ns1/configmaps?watch=true&resourceVersion=0'
                                           '&timeoutSeconds=1', timeout=10) as rsp:
        lines = rsp.read().splitlines()  # ends by itself after timeoutSeconds
    assert len(lines) == 1000 and all(json.loads(line)['type'] == 'ADDED' for line in lines)
    assert time.monotonic() - started < 10


def test_kmock_reactions_override_the_emulation(core: kubernetes.client.CoreV1Api, kube: KubeEmulator) -> None:
    assert kube.kmock is not None
    kube.kmock['get /api/v1/namespaces/ns1/configmaps/flaky'][:1] << 503 << {'kind': 'Status', 'code': 503}
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'flaky'}})
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map('flaky', 'ns1')
    assert e.value.status == 503
    assert core.read_namespaced_config_map('flaky', 'ns1').metadata.name == 'flaky'  # only once
    assert any(r.method == 'POST' and r.resource == kmock.resource('v1', 'configmaps') for r in kube.requests)


# --- patches (pure functions) ------------------------------------------------------------------

def test_patch_functions() -> None:
    assert apply_merge_patch({'a': {'b': 1, 'c': 2}, 'l': [1]}, {'a': {'b': None, 'd': 3}, 'l': [2]}) == \
        {'a': {'c': 2, 'd': 3}, 'l': [2]}
    doc = {'metadata': {'finalizers': ['a', 'b']}, 'x': 1}
    assert apply_json_patch(doc, [{'op': 'remove', 'path': '/metadata/finalizers/0'},
                                  {'op': 'add', 'path': '/metadata/finalizers/-', 'value': 'c'},
                                  {'op': 'move', 'from': '/x', 'path': '/y'}]) == \
        {'metadata': {'finalizers': ['b', 'c']}, 'y': 1}
    with pytest.raises(ValueError):
        apply_json_patch(doc, [{'op': 'test', 'path': '/x', 'value': 2}])
    pod = {'spec': {'containers': [{'name': 'a', 'image': 'x', 'args': ['1']}, {'name': 'b', 'image': 'y'}]}}
    smp = {'spec': {'$setElementOrder/containers': [{'name': 'a'}, {'name': 'b'}],
                    'containers': [{'name': 'b', 'image': 'z'}]}}
    assert apply_strategic_merge_patch(pod, smp) == \
        {'spec': {'containers': [{'name': 'a', 'image': 'x', 'args': ['1']}, {'name': 'b', 'image': 'z'}]}}
    matches = parse_label_selector('app=x,tier!=db,env in (a, b),!legacy,team')
    assert matches is not None
    assert matches({'app': 'x', 'env': 'a', 'team': 't'})
    assert not matches({'app': 'x', 'env': 'c', 'team': 't'})
    assert not matches({'app': 'x', 'env': 'a', 'team': 't', 'legacy': '1'})


# --- the real kopf operator --------------------------------------------------------------------

def test_kopf_operator_in_a_thread(kube: KubeEmulator, kopf_runner) -> None:  # noqa: F811
    kube.create_namespace('ns1')
    runner = kopf_runner('support.sample_operator', namespaces=['ns1'])
    kube.create(_job('j1', model='gpt2'))

    cm = wait_for(lambda: kube.get('configmaps', 'j1-config', 'ns1'), timeout=15)
    job = kube.get(PLURAL, 'j1', 'ns1')
    assert cm['data'] == {'model': 'gpt2'}
    assert cm['metadata']['ownerReferences'][0]['uid'] == job['metadata']['uid']
    job = wait_for(lambda: (j := kube.get(PLURAL, 'j1', 'ns1'))['status'].get('job_created') and j, timeout=15)
    assert job['status']['phase'] == 'Configured'
    assert job['status']['job_created'] == {'configMap': 'j1-config'}
    assert job['metadata']['finalizers'] == ['kopf.zalando.org/KopfFinalizerMarker']
    event = wait_for(lambda: kube.events('ns1', involved_name='j1', reason='ConfigCreated'), timeout=15)[0]
    assert event['message'] == 'Created ConfigMap j1-config'
    assert event['involvedObject']['uid'] == job['metadata']['uid']

    kube.patch(PLURAL, 'j1', {'spec': {'model': 'llama'}}, 'ns1')
    wait_for(lambda: kube.get('configmaps', 'j1-config', 'ns1')['data']['model'] == 'llama', timeout=15)

    kube.delete(PLURAL, 'j1', 'ns1')  # kopf's delete handler runs, then it removes its finalizer
    wait_for(lambda: kube.get(PLURAL, 'j1', 'ns1') is None, timeout=15)
    assert kube.events('ns1', involved_name='j1', reason='Deleting')
    assert kube.get('configmaps', 'j1-config', 'ns1') is not None  # no GC ...
    kube.collect_garbage()  # ... unless asked
    assert kube.get('configmaps', 'j1-config', 'ns1') is None

    runner.stop()
    assert runner.stop_duration is not None and runner.stop_duration < 5
    assert runner.exception is None
    wait_for(lambda: kube.watch_count() == 0, timeout=5)  # kopf closed all its watch-streams


def test_kopf_picks_up_resources_registered_later(kube: KubeEmulator, kopf_runner) -> None:  # noqa: F811
    registry = kopf.OperatorRegistry()

    @kopf.on.create('example.com', 'v1', 'gadgets', registry=registry)
    def gadget_created(patch: kopf.Patch, **_: object) -> None:
        patch.status['seen'] = True

    # kopf scans discovery at start, then watches CRDs; it ignores the watch's initial LIST (trusting
    # the scan), so a CRD created between the scan and that LIST is never noticed -- on a real cluster
    # too. The runner is ready after the scan: wait for kopf's CRD watch before registering. The LIST
    # is slowed here so that the window is always wide: without the wait this fails every time.
    kube.faults.add('delay', 'GET', r'/customresourcedefinitions$', delay=0.5, count=1)
    kopf_runner(registry=registry)  # cluster-wide; the resource does not exist yet
    wait_for(lambda: kube.watch_count('customresourcedefinitions') > 0, timeout=15)
    kube.register_resource('example.com', 'v1', 'gadgets', 'Gadget')  # a CRD event makes kopf rescan
    kube.create({'apiVersion': 'example.com/v1', 'kind': 'Gadget', 'metadata': {'name': 'g', 'namespace': 'default'}})
    wait_for(lambda: kube.get('gadgets', 'g', 'default')['status']['seen'], timeout=15)


def test_fault_rules_fail_chosen_requests(kube: KubeEmulator, core) -> None:
    """Each kind of injected fault, as the ``kubernetes`` client sees it, and what the store kept."""
    kube.faults.seed(3)
    cm = {'metadata': {'name': 'x'}, 'data': {'a': 'b'}}
    cases = [('status', {'code': 500}, 500, False), ('status', {'code': 429, 'retry_after': 2}, 429, False),
             ('status', {'code': 409}, 409, False), ('reset-before', {}, None, False),
             ('reset-after', {}, None, True), ('delay', {'delay': 0.2}, 201, True)]
    for i, (action, options, code, kept) in enumerate(cases):
        kube.faults.clear()
        kube.faults.add(action, 'POST', r'/configmaps$', count=1, **options)
        name = f'cm-{i}'
        try:
            core.create_namespaced_config_map('ns1', dict(cm, metadata={'name': name}))
            answer = 201
        except ApiException as e:
            answer = e.status
            assert json.loads(e.body)['code'] == code
            if code == 429:
                assert e.headers['Retry-After'] == '2' and _reason(e) == 'TooManyRequests'
        except urllib3.exceptions.ProtocolError:  # the connection was reset: no answer at all
            answer = None
        assert answer == code, action
        assert (kube.get('configmaps', name, 'ns1') is not None) == kept, action
        core.create_namespaced_config_map('ns1', dict(cm, metadata={'name': f'{name}-again'}))  # count=1: spent
    assert kube.faults.injected == {'500': 1, '429': 1, '409': 1, 'reset-before': 1, 'reset-after': 1, 'delay': 1}
    kube.faults.clear()
    rule = kube.faults.add('status', 'GET', r'/configmaps$', code=500, probability=0.5)  # 503: urllib3 retries GETs
    failed = 0
    for _ in range(40):
        try:
            core.list_namespaced_config_map('ns1')
        except ApiException as e:
            assert e.status == 500
            failed += 1
    assert rule.fired == failed and 5 < failed < 35  # a seeded coin: some, not all


# --- the real kubectl --------------------------------------------------------------------------

KUBECTL_MISSING = not pathlib.Path(KUBECTL).exists()

JOB_YAML = """
apiVersion: rlhf.dev/v1alpha1
kind: RLHFJob
metadata:
  name: job1
  namespace: ns1
spec:
  model: MODEL
"""


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL_MISSING, reason=f'{KUBECTL} is absent')
def test_kubectl_apply_get_patch_delete(kube: KubeEmulator) -> None:
    kube.create_namespace('ns1')
    assert 'created' in kube.kubectl('apply', '-f', '-',  # default validation: via the OpenAPI v3 stub
                                     input=JOB_YAML.replace('MODEL', 'gpt2')).stdout
    assert 'configured' in kube.kubectl('apply', '--validate=false', '-f', '-',
                                        input=JOB_YAML.replace('MODEL', 'llama')).stdout
    job = json.loads(kube.kubectl('get', 'rlhfjob', 'job1', '-n', 'ns1', '-o', 'json').stdout)
    assert job['spec'] == {'model': 'llama'} and job['metadata']['generation'] == 2
    assert 'job1' in kube.kubectl('get', 'rlhfjobs', '-n', 'ns1').stdout

    kube.kubectl('patch', 'rlhfjob', 'job1', '-n', 'ns1', '--subresource=status', '--type=merge',
                 '-p', '{"status": {"phase": "Running"}}')
    assert kube.get(PLURAL, 'job1', 'ns1')['status'] == {'phase': 'Running'}

    manifest = subprocess.run([KUBECTL, 'create', 'configmap', 'cm1', '-n', 'ns1', '--from-literal=a=b',
                               '--dry-run=client', '-o', 'yaml'], capture_output=True, text=True, check=True).stdout
    kube.kubectl('apply', '--validate=false', '-f', '-', input=manifest)
    kube.kubectl('apply', '--validate=false', '-f', '-', input=manifest.replace('a: b', 'a: c'))
    assert kube.get('configmaps', 'cm1', 'ns1')['data'] == {'a': 'c'}

    server_side = manifest.replace('cm1', 'cm2')
    kube.kubectl('apply', '--server-side', '--validate=false', '-f', '-', input=server_side)
    assert kube.get('configmaps', 'cm2', 'ns1')['data'] == {'a': 'b'}

    kube.kubectl('delete', 'rlhfjob', 'job1', '-n', 'ns1')
    kube.kubectl('delete', 'configmap', 'cm1', '-n', 'ns1')
    assert kube.get(PLURAL, 'job1', 'ns1') is None and kube.get('configmaps', 'cm1', 'ns1') is None
