"""Validation of what the components register: built-in kinds with kubernetes-validate (strict,
pinned minor), SMI kinds with the CRD schemas MeshInstall installs. A kind with no schema fails."""

from typing import Any

import kubernetes_validate

from mesh_components import smi

KUBERNETES_VERSION = "1.31"  # pinned minor: the oldest Kubernetes Lightmesh supports
SMI_GROUPS = (smi.ACCESS_GROUP, smi.SPECS_GROUP, smi.SPLIT_GROUP)


def manifest_of(record: Any) -> dict | None:
    """The manifest a mock registration stands for; None for non-manifest resources (components,
    dynamic resources, server-side-apply ``*Patch`` resources which are partial by design)."""
    if not record.typ.startswith("kubernetes:") or not record.custom or record.typ.endswith("Patch"):
        return None
    return record.inputs


def validate_manifest(manifest: dict) -> None:
    """Raise on any schema violation, and on a kind nobody can validate."""
    group = manifest["apiVersion"].split("/")[0]
    if group in SMI_GROUPS:
        smi.validate_object(manifest)
        return
    # kubernetes_validate only *warns* on a missing schema; that must count as a failure here.
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"no schema for {manifest['apiVersion']} {manifest['kind']}: {exc}") from None


def validate_all(records: list) -> int:
    """Validate every manifest among ``records``; returns how many were checked."""
    checked = 0
    for record in records:
        manifest = manifest_of(record)
        if manifest is None:
            continue
        try:
            validate_manifest(manifest)
        except Exception as exc:  # re-raise with the resource name for a readable failure
            raise AssertionError(f"{record.typ} {record.name}: {exc}") from exc
        checked += 1
    return checked
