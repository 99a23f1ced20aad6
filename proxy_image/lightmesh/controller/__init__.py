"""The control plane: ``lightmesh controller`` (cluster state → topology → proxy config).

Pure core (no I/O, golden-tested in ``tests/controller``):

``model``     ``ClusterState``: the raw Kubernetes objects (dicts as the API returns them) the
              controller watches, grouped by kind, plus the existing shadow Services;
              ``Settings``: mesh namespace, ACL, default traffic type, domains, namespace filters,
              port ranges, listen mode (``node``: proxies listen on ``::`` (dual stack) at the mesh ports;
              ``shadow-ip``: local mode, proxies listen on each shadow Service's ClusterIP at the
              user Service's own ports, as kube-proxy would forward them).
``topology``  ``build_topology(state, settings) -> Topology``: services, ports, endpoints
              (ready only, named targetPorts per pod), traffic targets, splits, Gateway API
              HTTPRoute rules by parent Service (``mesh_routes``), and
              ``errors`` (``ObjectError``: kind, namespace, name, field, message) for every object
              left out or partially applied.
``ports``     ``allocate_ports(topology, shadow_services, settings) -> PortTable``: stable mesh
              ports, recovered from the existing shadow Services, freed on delete, exhaustion
              reported per service.
``shadow``    ``shadow_name(namespace, name)`` (hashed, ≤ 63 chars) and
              ``desired_shadow_services(topology, ports, settings) -> list[dict]``.
``provider``  ``build_config(topology, ports, shadow_services, settings, version) -> ProxyConfig``.
``build``     ``build(state, settings, version, previous_ports=None) -> BuildResult`` (topology,
              ports, desired shadow Services, config, errors): the one call the shell makes.

Thin shell (I/O):

``sources``   list+watch caches (lightkube; resume from resourceVersion, re-list on 410, backoff)
              and the file source (``--manifests DIR``) used by local mode.
``writer``    shadow Services: server-side apply in a cluster (leader only), in memory + a state
              file in local mode (ClusterIPs from 127.1.0.0/16).
``api``       ``/api/configuration/current`` (ETag + long poll), ``/api/topology/current``,
              ``/api/status/readiness``, ``/api/status/nodes``, ``/metrics``.
``dns``       the mesh DNS (dnslib, UDP + TCP): ``<svc>.<ns>.<domain>`` → shadow ClusterIP.
``leader``    Lease election (coordination.k8s.io/v1).
``events``    a Kubernetes Event on each object that has an error.
``metrics``   :data:`~lightmesh.controller.metrics.METRICS` and the registry.
``main``      ``lightmesh controller`` CLI and the reconcile loop.
"""
