"""Discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) built from the
resource registry, so kubectl maps `kubectl get co`, `csr`, `machines -A` to URLs.

Only the plain forms (APIVersions, APIGroupList, APIResourceList) are served: kubectl asks for
aggregated discovery first and falls back to these when the answer is plain application/json.
"""

from __future__ import annotations

from typing import Any

from lab.apiserver.resources import RESOURCES, groups


def api_versions(*, server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in groups().items() if name],
    }


def api_group(name: str) -> dict[str, Any] | None:
    versions = groups().get(name)
    if not name or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def api_resource_list(*, group: str, version: str) -> dict[str, Any] | None:
    """The APIResourceList of one group version, subresources as `<resource>/<sub>` entries."""
    entries: list[dict[str, Any]] = []
    for res in RESOURCES:
        if res.group != group or version not in res.versions:
            continue
        entry: dict[str, Any] = {
            "name": res.name,
            "singularName": res.singular,
            "namespaced": res.namespaced,
            "kind": res.kind,
            "verbs": list(res.verbs),
        }
        if res.short_names:
            entry["shortNames"] = list(res.short_names)
        if res.categories:
            entry["categories"] = list(res.categories)
        entries.append(entry)
        for sub in res.subresources:
            entries.append({
                "name": f"{res.name}/{sub}",
                "singularName": "",
                "namespaced": res.namespaced,
                "kind": res.subresource_kind(sub),
                "verbs": list(res.subresource_verbs(sub)),
            })
    if not entries:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }
