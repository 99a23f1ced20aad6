"""The data plane: ``lightmesh proxy``, one per node, HTTP/TCP/UDP on the mesh ports.

Process model: a supervisor (config source, admin port, metrics aggregation) and ``--workers N``
worker processes that each open every listener with ``SO_REUSEPORT`` and run uvloop. Configs reach
the workers from the supervisor; each worker swaps atomically.

Modules and what each owns (the interfaces below are the contract between them):

``metrics``      :class:`~lightmesh.proxy.metrics.ProxyMetrics` (per worker, plain dicts), merge and
                 Prometheus text rendering; :data:`~lightmesh.proxy.metrics.METRICS` is the registry.
``balancer``     ``Balancer(servers, weights, weighted=..., eject_seconds=...)``: ``pick(exclude=())``
                 round robin or smooth weighted round robin, skipping servers ejected after
                 ``failed(server)`` (passive health); ``succeeded(server)`` clears the ejection.
``policies``     the middlewares' state machines, pure of I/O and driven by a clock:
                 ``AllowList(cidrs).allows(ip)``, ``RateLimiter(average, burst, period).check(ip)``
                 (0.0 = pass, else seconds to the next token: waited for within ``max_delay``
                 after ``reserve(ip)``, else ``Retry-After``),
                 ``CircuitBreaker(expression).allow()/record(status|None, seconds)/state``
                 (rolling 10 s window, checked every 100 ms, open 10 s, then a recovery ramp).
``routing``      ``compile_http(config, previous, metrics, options) -> HTTPPlane``: the HTTP part of
                 a :class:`~lightmesh.config.ProxyConfig` compiled into per-entry-point route tables;
                 state that must survive a config swap (rate-limit buckets, breakers, upstream pools,
                 ejections) is carried over from ``previous`` for elements whose definition did not
                 change. ``HTTPPlane.close()`` releases what the new plane no longer uses.
``http``         the HTTP/1.1 reverse proxy (httptools protocol classes, upstream keep-alive pool,
                 streaming, Upgrade, hostile-input rejection). ``HTTPOptions`` holds the limits;
                 ``protocol_factory(holder, entry_point, options, metrics)`` returns what
                 ``loop.create_server`` takes. ``holder.http`` (the current ``HTTPPlane``) is read
                 once per request head, so a swap is one attribute assignment and a request in flight
                 finishes on the plane it started with. ``ConnectionSet`` (one per worker, in
                 ``HTTPOptions.connections``) tracks client connections for graceful drain
                 (``close_idle()``, ``await drain(timeout)``).
``h2``           HTTP/2 cleartext (gRPC): a client connection that opens with the HTTP/2 preface is
                 handed over by ``http`` to ``H2Downstream``; its streams are routed and checked as
                 HTTP/1.1 requests are and relayed to ``h2c://`` servers over one multiplexed
                 ``H2Upstream`` connection per server, flow control end to end; to other servers
                 each stream is translated to HTTP/1.1 (``H1Upstream``).
``tracing``      W3C ``traceparent`` handling and, with ``--otlp-endpoint``, one OpenTelemetry span
                 per request.
``tcp``, ``udp`` L4 routes: source allow-list, weighted servers, splice relay (TCP), sessions (UDP).
``runtime``      one worker: holds ``http`` and the L4 routes, applies a config (validate, compile,
                 open/close listeners by diff, swap), drains on SIGTERM.
``steering``     with several workers, a port that carries a rate-limited route sends every
                 connection of one client IP to the same worker (a reuseport BPF program), so the
                 limit holds per client IP, not per worker.
``source``       where configs come from: controller long-poll (ETag/If-None-Match) or a file.
``admin``        ``/ping``, ``/live``, ``/metrics``, ``/api/rawdata`` on the admin port.
``main``         ``lightmesh proxy`` CLI: flags, supervisor, workers.
"""
