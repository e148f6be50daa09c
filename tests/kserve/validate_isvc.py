"""Check an InferenceService YAML against KServe's own v1beta1 models, without a cluster.

Run with a Python that has the `kserve` package (tests create .venv-kserve for it):
    python tests/kserve/validate_isvc.py inferenceservice.yaml
Every key must be an attribute of KServe's (or Kubernetes') generated model for that position, every
value of the declared type, and each model is constructed, which runs its required-field checks.
Prints "valid" or the first problem with its path; exits 0 or 1.
"""

import re
import sys

import kserve.models
import kubernetes.client.models as k8s_models
import yaml

_LIST = re.compile(r"^(?:list|List)\[(.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def model_class(name: str):
    return getattr(kserve.models, name, None) or getattr(k8s_models, name)


def check(value, type_name: str, path: str):
    if value is None:
        return None
    if type_name in _PRIMITIVES:
        if type_name == "str" and isinstance(value, (int, float)) and path.endswith(("cpu", "memory", "gpu")):
            value = str(value)  # resource quantities are strings; YAML may give numbers
        if not isinstance(value, _PRIMITIVES[type_name]) or (type_name == "int" and isinstance(value, bool)):
            raise ValueError(f"{path}: {value!r} is not {type_name}")
        return value
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list")
        return [check(item, match[1], f"{path}[{i}]") for i, item in enumerate(value)]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping")
        inner = match[1] or match[2]
        return {k: check(v, inner, f"{path}.{k}") for k, v in value.items()}
    cls = model_class(type_name)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a {type_name} mapping")
    by_json_key = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json_key))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown} for {type_name}")
    kwargs = {by_json_key[k]: check(v, cls.openapi_types[by_json_key[k]], f"{path}.{k}")
              for k, v in value.items()}
    return cls(**kwargs)  # the generated setters reject missing required fields


def main(path: str) -> int:
    document = yaml.safe_load(open(path))
    try:
        if (document.get("apiVersion"), document.get("kind")) != ("serving.kserve.io/v1beta1",
                                                                  "InferenceService"):
            raise ValueError("not a serving.kserve.io/v1beta1 InferenceService")
        check(document, "V1beta1InferenceService", "$")
    except ValueError as err:
        print(f"invalid: {err}")
        return 1
    print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
