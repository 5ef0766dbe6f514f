"""
The old import path of the Kubernetes API emulator, kept for the modules that still use it.

The emulator lives in the :mod:`support.emulator` package, one module per concern; its
docstring describes what it adds to KMock. Import from there in new code.
"""
from .emulator import (
    BUILTIN_RESOURCES,
    CRD_RESOURCE,
    CUSTOM_RESOURCES,
    DEFAULT_NAMESPACES,
    KUBECTL,
    ApiError,
    ApiResource,
    EmulatorHandler,
    KubeEmulator,
    ObjectStore,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
    parse_field_selector,
    parse_label_selector,
    wait_for,
)

__all__ = [
    'ApiError',
    'ApiResource',
    'BUILTIN_RESOURCES',
    'CRD_RESOURCE',
    'CUSTOM_RESOURCES',
    'DEFAULT_NAMESPACES',
    'EmulatorHandler',
    'KUBECTL',
    'KubeEmulator',
    'ObjectStore',
    'apply_json_patch',
    'apply_merge_patch',
    'apply_strategic_merge_patch',
    'parse_field_selector',
    'parse_label_selector',
    'wait_for',
]
