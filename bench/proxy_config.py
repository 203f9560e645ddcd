#!/usr/bin/env python3
"""Writes one proxy's configuration for a shape of `bench/paths.sh`.

Every proxy gets the same work where it can express it: keep-alive to clients and to two
backends (round robin), forwarding headers and a request id, no access log, TLS with the
same certificate (ALPN h2 and http/1.1, session resumption on), and, for the route shapes, a
table of N routes:

* half of them on one host, `api.bench`, cycling through three kinds: a path prefix
  (`/svcI/`), an exact path (`/exactI`) and a regular expression (`^/reI/[0-9]+$`);
* the other half one host each (`hI.bench`, every path).

Each peer is configured at its best for that table: nginx with its prefix tree for prefixes,
`location =` for exact paths and a server name hash; HAProxy with maps (`map_str` for hosts
and exact paths, `map_beg` for prefixes, `map_reg` for expressions) rather than one rule per
route; Caddy with one route per table entry (it has no other way to route).

Usage: proxy_config.py PROXY --out FILE --run DIR --port P --backends A,B
                       [--tls CERT,KEY] [--routes N]
"""

import argparse
import json
import os
import sys

PROXIES = ("parapet", "nginx", "haproxy", "caddy", "relay")


def route_table(n):
    """(host, kind, value) for n routes: half on api.bench (prefix/exact/regex), half hosts."""
    api = n - n // 2
    table = []
    for i in range(api):
        kind = ("prefix", "exact", "regex")[i % 3]
        value = {"prefix": f"/svc{i}/", "exact": f"/exact{i}", "regex": f"^/re{i}/[0-9]+$"}[kind]
        table.append(("api.bench", kind, value))
    for i in range(n // 2):
        table.append((f"h{i}.bench", "host", "/"))
    return table


def parapet(a, table):
    ba, bb = a.backends
    out = [
        "# Parapet standalone config written by bench/proxy_config.py for bench/paths.sh.",
        "apiVersion: parapet.dev/v1alpha1",
        "kind: UpstreamPool",
        "metadata: {name: body-1k}",
        "spec:",
        "  static:",
        f"    - {{address: 127.0.0.1, port: {ba}}}",
        f"    - {{address: 127.0.0.1, port: {bb}}}",
        "  loadBalancing: {algorithm: RoundRobin}",
    ]
    if not table:
        out += [
            "---",
            "apiVersion: parapet.dev/v1alpha1",
            "kind: ApiRoute",
            "metadata: {name: bench}",
            "spec:",
            '  hosts: ["*"]',
            "  rules:",
            "    - matches: [{path: {type: PathPrefix, value: /}}]",
            "      backends: [{pool: body-1k}]",
        ]
        return "\n".join(out) + "\n"
    # An ApiRoute holds at most 16 rules: the api.bench table is split across several.
    api = [r for r in table if r[0] == "api.bench"]
    for start in range(0, len(api), 16):
        out += ["---", "apiVersion: parapet.dev/v1alpha1", "kind: ApiRoute",
                f"metadata: {{name: api-{start // 16}}}", "spec:", '  hosts: ["api.bench"]',
                "  rules:"]
        for _, kind, value in api[start:start + 16]:
            typ = {"prefix": "PathPrefix", "exact": "Exact", "regex": "RegularExpression"}[kind]
            if kind == "prefix":
                value = value.rstrip("/")
            if kind == "regex":
                value = value.lstrip("^").rstrip("$")
            out += [f"    - matches: [{{path: {{type: {typ}, value: '{value}'}}}}]",
                    "      backends: [{pool: body-1k}]"]
    for i, (host, _, _) in enumerate(r for r in table if r[1] == "host"):
        out += ["---", "apiVersion: parapet.dev/v1alpha1", "kind: ApiRoute",
                f"metadata: {{name: host-{i}}}", "spec:", f'  hosts: ["{host}"]',
                "  rules:", "    - backends: [{pool: body-1k}]"]
    return "\n".join(out) + "\n"


def nginx(a, table):
    ba, bb = a.backends
    run = a.run
    # Socket options go on the first server's listen only (nginx refuses them twice).
    listen = plain_listen = f"listen 127.0.0.1:{a.port}"
    listen += " reuseport backlog=4096"
    tls = ""
    if a.tls:
        cert, key = a.tls
        listen += " ssl http2"
        plain_listen += " ssl http2"
        tls = f"""
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:20m;
    ssl_session_tickets on;
    ssl_buffer_size 16k;"""
    proxy = f"""
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Request-Id $req_id;
        add_header X-Request-Id $req_id always;
        proxy_connect_timeout 5s;
        proxy_read_timeout 15s;
        proxy_send_timeout 15s;
        proxy_buffer_size 16k;
        proxy_buffers 8 16k;
        # Bodies stream to the backend as they arrive, never to a temporary file.
        proxy_request_buffering off;
        client_body_buffer_size 512k;
        client_max_body_size 16m;
        proxy_next_upstream error timeout;"""
    servers = []
    if not table:
        servers.append(f"""
    server {{
        {listen};{tls}{proxy}
        location / {{ proxy_pass http://body_1k; }}
    }}""")
    else:
        locs = []
        for host, kind, value in table:
            if host != "api.bench":
                continue
            if kind == "prefix":
                locs.append(f"        location {value} {{ proxy_pass http://body_1k; }}")
            elif kind == "exact":
                locs.append(f"        location = {value} {{ proxy_pass http://body_1k; }}")
            else:
                locs.append(f"        location ~ {value} {{ proxy_pass http://body_1k; }}")
        servers.append(f"""
    server {{
        {listen};
        server_name api.bench;{tls}{proxy}
{chr(10).join(locs)}
        location / {{ return 404; }}
    }}""")
        hosts = " ".join(h for h, k, _ in table if k == "host")
        if hosts:
            servers.append(f"""
    server {{
        {plain_listen};
        server_name {hosts};{tls}{proxy}
        location / {{ proxy_pass http://body_1k; }}
    }}""")
    return f"""# nginx config written by bench/proxy_config.py for bench/paths.sh.
worker_processes 1;
worker_rlimit_nofile 20000;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
daemon off;

events {{
    worker_connections 16384;
    use epoll;
}}

http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # No cap on requests per connection (the default, 1000, also ends HTTP/2 connections).
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 128;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 128;

    client_body_temp_path {run}/nginx-body;
    proxy_temp_path {run}/nginx-proxy;
    fastcgi_temp_path {run}/nginx-fastcgi;
    uwsgi_temp_path {run}/nginx-uwsgi;
    scgi_temp_path {run}/nginx-scgi;

    upstream body_1k {{
        server 127.0.0.1:{ba};
        server 127.0.0.1:{bb};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}

    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        ""      $request_id;
    }}
{"".join(servers)}
}}
"""


def haproxy(a, table):
    ba, bb = a.backends
    bind = f"bind 127.0.0.1:{a.port}"
    if a.tls:
        bind += f" ssl crt {a.run}/haproxy.pem alpn h2,http/1.1"
    rules = ["    use_backend body_1k"]
    if table:
        def write(name, entries):
            with open(os.path.join(a.run, name), "w") as f:
                f.writelines(f"{e} r\n" for e in entries)
        write("hosts.map", [h for h, k, _ in table if k == "host"])
        write("prefix.map", [v for _, k, v in table if k == "prefix"])
        write("exact.map", [v for _, k, v in table if k == "exact"])
        write("regex.map", [v for _, k, v in table if k == "regex"])
        rules = [
            f"    use_backend body_1k if {{ req.hdr(host),field(1,:),lower,map_str({a.run}/hosts.map) -m found }}",
            "    acl api req.hdr(host),field(1,:),lower -m str api.bench",
            f"    use_backend body_1k if api {{ path,map_str({a.run}/exact.map) -m found }}",
            f"    use_backend body_1k if api {{ path,map_beg({a.run}/prefix.map) -m found }}",
            f"    use_backend body_1k if api {{ path,map_reg({a.run}/regex.map) -m found }}",
            "    default_backend none",
        ]
    return f"""# HAProxy config written by bench/proxy_config.py for bench/paths.sh.
global
    nbthread 1
    # HAProxy reserves two files per connection and a process may open 20,000 here: the
    # most it can hold (bench/paths.sh holds fewer idle connections on it accordingly).
    maxconn 9900
    pidfile {a.run}/haproxy.pid
    tune.ssl.cachesize 100000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse safe
    timeout connect 5s
    timeout client 300s
    timeout server 15s
    timeout http-request 10s
    timeout http-keep-alive 300s
    retries 2
    option redispatch

frontend bench
    {bind}
    maxconn 9900
    http-request set-header X-Request-Id %[uuid] unless {{ req.hdr(x-request-id) -m found }}
    http-request set-var(txn.req_id) req.hdr(x-request-id)
    http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-response set-header X-Request-Id %[var(txn.req_id)]
{chr(10).join(rules)}

backend body_1k
    balance roundrobin
    server a 127.0.0.1:{ba}
    server b 127.0.0.1:{bb}

backend none
    http-request return status 404
"""


def relay(a, table):
    """HAProxy in TCP mode: not a peer but the floor. It passes bytes between each client
    connection and a backend connection of its own and does no HTTP work at all (no parsing,
    no headers added, no routing), so its CPU per request is what this machine's kernel and a
    lean event loop cost for the same traffic. bench/run.sh's ceiling (haproxy-tcp.cfg.tmpl)
    is the same relay for wrk's two pools; this one has one pool and HAProxy's default
    buffers, as the HTTP peer above has."""
    if a.tls or table:
        sys.exit("the relay serves plain HTTP through one route only (no --tls, no --routes)")
    ba, bb = a.backends
    return f"""# HAProxy in TCP mode, written by bench/proxy_config.py for bench/paths.sh.
global
    nbthread 1
    maxconn 9900
    pidfile {a.run}/relay.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend relay
    bind 127.0.0.1:{a.port}
    default_backend body_1k

backend body_1k
    balance roundrobin
    server a 127.0.0.1:{ba}
    server b 127.0.0.1:{bb}
"""


def caddy(a, table):
    ba, bb = a.backends
    proxy = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"127.0.0.1:{ba}"}, {"dial": f"127.0.0.1:{bb}"}],
        "load_balancing": {"selection_policy": {"policy": "round_robin"}},
        "headers": {"request": {"set": {"X-Request-Id": ["{http.request.uuid}"]}}},
        "transport": {"protocol": "http", "keep_alive": {"max_idle_conns_per_host": 256}},
    }
    routes = []
    if not table:
        routes.append({"handle": [proxy]})
    else:
        for host, kind, value in table:
            m = {"host": [host]}
            if kind == "prefix":
                m["path"] = [value + "*"]
            elif kind == "exact":
                m["path"] = [value]
            elif kind == "regex":
                m["path_regexp"] = {"pattern": value}
            routes.append({"match": [m], "handle": [proxy], "terminal": True})
        routes.append({"handle": [{"handler": "static_response", "status_code": 404}]})
    server = {
        "listen": [f"127.0.0.1:{a.port}"],
        "routes": routes,
        "automatic_https": {"disable": True},
        "protocols": ["h1", "h2"] if a.tls else ["h1"],
        "idle_timeout": "300s",
    }
    conf = {"admin": {"disabled": True}, "logging": {"logs": {"default": {"level": "ERROR"}}},
            "apps": {"http": {"servers": {"bench": server}}}}
    if a.tls:
        cert, key = a.tls
        server["tls_connection_policies"] = [{"default_sni": "bench.local"}]
        conf["apps"]["tls"] = {"certificates": {"load_files": [{"certificate": cert, "key": key}]},
                               "automation": {"policies": [{"disable_ocsp_stapling": True}]}}
    return json.dumps(conf, indent=1) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("proxy", choices=PROXIES)
    p.add_argument("--out", required=True)
    p.add_argument("--run", required=True, help="the run directory (pid files, maps, logs)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backends", required=True, help="A,B: the two backend ports")
    p.add_argument("--tls", help="CERT,KEY: serve TLS with this certificate")
    p.add_argument("--routes", type=int, default=0, help="a table of N routes (0: one route)")
    a = p.parse_args()
    a.backends = [int(x) for x in a.backends.split(",")]
    if len(a.backends) != 2:
        sys.exit("--backends takes two ports, A,B")
    a.tls = a.tls.split(",") if a.tls else None
    table = route_table(a.routes) if a.routes else []
    text = {"parapet": parapet, "nginx": nginx, "haproxy": haproxy, "caddy": caddy,
            "relay": relay}[a.proxy](a, table)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
