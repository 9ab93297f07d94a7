"""The nginx `proxy_cache` configuration the benchmarks compare the proxy with."""

from __future__ import annotations

_NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=60m
                     use_temp_path=off;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
{lock}            proxy_cache_valid 200 3600s;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""

# The herd comparison turns on proxy_cache_lock (one upstream request per instance for a burst);
# long timeouts so a loaded machine never lets a second request through by timeout.
NGINX_LOCK = """            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_lock_age 30s;
"""


# What a production nginx.conf (Debian's stock one) adds: sendfile from the cache file, full
# packets, and proxy_cache_lock as an operator would set it against herds.
NGINX_PRODUCTION = """    sendfile on;
    tcp_nopush on;
"""


def nginx_conf(
    *, user: str, tmp: object, backend: int, port: int, lock: bool = False, production: bool = False
) -> str:
    """An nginx.conf for one caching instance in `tmp` (pid, logs, temp and cache dirs there).

    ``production``: Debian's stock ``sendfile on; tcp_nopush on;`` and ``proxy_cache_lock``.
    """
    conf = _NGINX_CONF.format(
        user=user,
        tmp=tmp,
        backend=backend,
        port=port,
        lock=NGINX_LOCK if lock or production else "",
    )
    if production:
        conf = conf.replace("    access_log off;\n", "    access_log off;\n" + NGINX_PRODUCTION, 1)
    return conf
