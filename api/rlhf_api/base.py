"""What every model of the RLHFJob API shares: the base class, the schema markers the CRD
generator reads, and the name and quantity patterns."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# Metadata keys understood by the schema generator (see rlhf_api.crd).
CEL = "x-cel"  # list of {"rule", "message"} attached to an object's schema
INT_OR_STRING = "x-int-or-string"
FREE_FORM = "x-free-form"
RAW_SCHEMA = "x-raw-schema"  # an OpenAPI schema given as is (the core Kubernetes types)

# A Kubernetes resource quantity: a non-negative decimal with an optional SI/binary suffix or exponent.
QUANTITY = re.compile(r"^\+?(\d+\.?\d*|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def snake_case(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


class SpecModel(BaseModel):
    """Base for every part of the spec: camelCase in YAML, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=False,
    )

    def dump(self) -> dict[str, Any]:
        """The YAML/JSON form: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
