# ruff: noqa: E501, W291
"""`ray start` output and Ray log files recorded on this project's test host (Ray 2.60.0).

Recorded with ``tesai.agent.ray_node.start_head`` as the agent calls it (token auth,
``--log-style=record``), keeping the node's ``session_latest/logs`` before cleanup:

- HEAD_PORT_CLASH: two heads whose agents' port ranges overlapped started 0.7 s apart; this
  one's GCS could not bind its port (the other's held it) and its CLI met the other cluster's
  GCS there, which rejected its token (2026-12-07 18:29, load ≈ 8).
- HEAD_METRICS_HEAD_EOF: a head whose temp dir was one level too deep
  (``/tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0``, 43 characters): the dashboard's
  MetricsHead subprocess could not create its unix socket; ``ray start`` gave up after 74 s.
- HEAD_OVERLOADED: a head on a host at load ≈ 16: Ray's 30 s raylet registration wait ran out.
- WORKER_WRONG_TOKEN: a worker started with a token other than its head's.

Tracebacks of the click frames and one long config line are shortened; nothing else is edited.
"""

HEAD_PORT_CLASH_STDOUT = "2026-12-07 18:29:01,606\tINFO usage_lib.py:448 -- Usage stats collection is disabled.\n2026-12-07 18:29:01,606\tINFO scripts.py:1043 -- Local node IP: 192.0.2.2\n"
HEAD_PORT_CLASH_STDERR = (
    "[2026-12-07 18:29:01,712 W 15142 15142] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:29:02,724 W 15142 15142] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "Traceback (most recent call last):\n"
    '  File "/work/main/.venv/bin/ray", line 10, in <module>\n'
    "    sys.exit(main())\n"
    "             ^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 3021, in main\n'
    "    return cli()\n"
    "           ^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1653, in __call__\n'
    "    return self.main(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1560, in main\n'
    "    rv = self.invoke(ctx)\n"
    "         ^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 2054, in invoke\n'
    "    return _process_result(sub_ctx.command.invoke(sub_ctx))\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1414, in invoke\n'
    "    return ctx.invoke(self.callback, **ctx.params)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 911, in invoke\n'
    "    return callback(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/autoscaler/_private/cli_logger.py", line 812, in wrapper\n'
    "    return f(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 1074, in start\n'
    "    node = ray._private.node.Node(\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 416, in __init__\n'
    "    self.start_head_processes()\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 1651, in start_head_processes\n'
    "    assert self.get_gcs_client() is not None\n"
    "           ^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 952, in get_gcs_client\n'
    "    self._init_gcs_client()\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 1025, in _init_gcs_client\n'
    "    raise RuntimeError(\n"
    "RuntimeError: Failed to start GCS.  Last 1 lines of error files:\n"
    "[2026-12-07 18:29:01,896 C 15262 15262] (gcs_server) grpc_server.cc:134:  An unexpected system state has occurred. You have likely discovered a bug in Ray. Please report this issue at https://github.com/ray-project/ray/issues and we'll work with you to fix it. Check failed: server_ Failed to start the grpc server. The specified port is 28106. This means that Ray's core components will not be able to function correctly. If the server startup error message is `Address already in use`, it indicates the server fails to start because the port is already used by other processes (such as --node-manager-port, --object-manager-port, --gcs-server-port, and ports between --min-worker-port, --max-worker-port). Try running sudo lsof -i :28106 to check if there are other processes listening to the port.\n"
    "\n"
    ".Please check /tmp/c0ta3tw5so/20aec63730bc-0/session_2026-12-07_18-29-01_606658_15142/logs/gcs_server.out for details. Last connection error: None\n"
)
HEAD_PORT_CLASH_GCS_SERVER_ERR = (
    'E1207 18:29:01.733106280   15262 chttp2_server.cc:1059]                UNKNOWN:No address added out of total 1 resolved for \'0.0.0.0:28106\' {created_time:"2026-12-07T18:29:01.733030335+00:00", children:[UNKNOWN:Failed to add any wildcard listeners {created_time:"2026-12-07T18:29:01.733021286+00:00", children:[UNKNOWN:Unable to configure socket {created_time:"2026-12-07T18:29:01.73299626+00:00", fd:44, children:[UNKNOWN:Address already in use {syscall:"bind", os_error:"Address already in use", errno:98, created_time:"2026-12-07T18:29:01.732967004+00:00"}]}, UNKNOWN:Unable to configure socket {fd:44, created_time:"2026-12-07T18:29:01.733019174+00:00", children:[UNKNOWN:Address already in use {syscall:"bind", os_error:"Address already in use", errno:98, created_time:"2026-12-07T18:29:01.733016734+00:00"}]}]}]}\n'
    "[2026-12-07 18:29:01,896 C 15262 15262] (gcs_server) grpc_server.cc:134:  An unexpected system state has occurred. You have likely discovered a bug in Ray. Please report this issue at https://github.com/ray-project/ray/issues and we'll work with you to fix it. Check failed: server_ Failed to start the grpc server. The specified port is 28106. This means that Ray's core components will not be able to function correctly. If the server startup error message is `Address already in use`, it indicates the server fails to start because the port is already used by other processes (such as --node-manager-port, --object-manager-port, --gcs-server-port, and ports between --min-worker-port, --max-worker-port). Try running sudo lsof -i :28106 to check if there are other processes listening to the port.\n"
)

HEAD_METRICS_HEAD_EOF_STDOUT = (
    "2026-12-07 18:21:30,567\tINFO usage_lib.py:448 -- Usage stats collection is disabled.\n"
    "2026-12-07 18:21:30,567\tINFO scripts.py:1043 -- Local node IP: 192.0.2.2\n"
)
HEAD_METRICS_HEAD_EOF_STDERR = """\
2026-12-07 18:22:31,496\tERROR services.py:1431 -- Failed to start the dashboard 
2026-12-07 18:22:31,496\tERROR services.py:1456 -- Error should be written to 'dashboard.log' or 'dashboard.err'. We are printing the last 20 lines for you. See 'https://docs.ray.io/en/master/ray-observability/user-guides/configure-logging.html#logging-directory-structure' to find where the log file is.
Traceback (most recent call last):
  File "/work/main/.venv/bin/ray", line 10, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 1074, in start
    node = ray._private.node.Node(
           ^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 416, in __init__
    self.start_head_processes()
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 1666, in start_head_processes
    self.start_api_server(
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 1328, in start_api_server
    self._webui_url, process_info = ray._private.services.start_api_server(
                                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/services.py", line 1498, in start_api_server
    raise e from e
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/services.py", line 1486, in start_api_server
    raise Exception(last_log_str)
Exception: 
The last 20 lines of /tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0/session_2026-12-07_18-21-30_567726_4449/logs/dashboard.log (it contains the error message from the dashboard): 
    buf = self._recv(4)
          ^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/multiprocessing/connection.py", line 399, in _recv
    raise EOFError
EOFError

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py", line 315, in <module>
    loop.run_until_complete(dashboard.run())
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/base_events.py", line 653, in run_until_complete
    return future.result()
           ^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py", line 107, in run
    await self.dashboard_head.run()
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/head.py", line 486, in run
    handle.wait_for_module_ready()
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/subprocesses/handle.py", line 179, in wait_for_module_ready
    raise RuntimeError(
RuntimeError: Module MetricsHead failed to start. Received EOF from pipe.
"""
HEAD_METRICS_HEAD_EOF_MODULE_LOG = """\
2026-12-07 18:21:50,478\tINFO module.py:217 -- Starting module MetricsHead with incarnation 0 and config SubprocessModuleConfig(cluster_id_hex='4bbd2aa3cef07d9e156b198830141ca1275497152ca0018db3dbfa1b', gcs_address='192.0.2.2:27006', session_name='session_2026-12-07_18-21-30_567726_4449', temp_dir='/tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0', socket_dir='/tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0/session_2026-12-07_18-21-30_567726_4449/sockets')
2026-12-07 18:21:50,479\tWARNING __init__.py:160 -- DeprecationWarning: `ray.ray_constants.DASHBOARD_CLIENT_MAX_SIZE` is a private attribute and access will be removed in a future Ray version.
2026-12-07 18:21:50,638\tERROR module.py:234 -- Error creating module MetricsHead
Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/subprocesses/module.py", line 229, in run_module_inner
    await module.run()
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/modules/metrics/metrics_head.py", line 460, in run
    await super().run()
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/subprocesses/module.py", line 147, in run
    socket_path = get_socket_path(self._config.socket_dir, module_name)
                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/dashboard/subprocesses/utils.py", line 55, in get_socket_path
    validate_socket_filepath(socket_path)
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/utils.py", line 1760, in validate_socket_filepath
    raise OSError(
OSError: validate_socket_filename failed: AF_UNIX path length cannot exceed 107 bytes: /tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0/session_2026-12-07_18-21-30_567726_4449/sockets/dash_MetricsHead
"""

HEAD_OVERLOADED_STDERR = """\
2026-12-07 18:26:33,250\tINFO node.py:438 -- Failed to get node info b'RPC error: Deadline Exceeded'
Traceback (most recent call last):
  File "/work/main/.venv/bin/ray", line 10, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 1074, in start
    node = ray._private.node.Node(
           ^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 440, in __init__
    raise Exception(
Exception: The current node timed out during startup. This could happen because some of the raylet failed to startup or the GCS has become overloaded.
"""

WORKER_WRONG_TOKEN_STDOUT = (
    "2026-12-07 18:33:00,041\tINFO scripts.py:1234 -- Local node IP: 192.0.2.2\n"
)
WORKER_WRONG_TOKEN_STDERR = (
    "[2026-12-07 18:33:00,067 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:01,072 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:02,077 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:03,082 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:04,087 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:05,091 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:06,097 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:07,101 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:08,104 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:09,112 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:10,116 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:11,120 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:12,126 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:13,130 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:14,137 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:15,141 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:16,150 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:17,160 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:18,170 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "[2026-12-07 18:33:19,179 W 19744 19744] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    "Traceback (most recent call last):\n"
    '  File "/work/main/.venv/bin/ray", line 10, in <module>\n'
    "    sys.exit(main())\n"
    "             ^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 3021, in main\n'
    "    return cli()\n"
    "           ^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1653, in __call__\n'
    "    return self.main(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1560, in main\n'
    "    rv = self.invoke(ctx)\n"
    "         ^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 2054, in invoke\n'
    "    return _process_result(sub_ctx.command.invoke(sub_ctx))\n"
    "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 1414, in invoke\n'
    "    return ctx.invoke(self.callback, **ctx.params)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/click/core.py", line 911, in invoke\n'
    "    return callback(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/autoscaler/_private/cli_logger.py", line 812, in wrapper\n'
    "    return f(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/scripts/scripts.py", line 1239, in start\n'
    "    node = ray._private.node.Node(\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 192, in __init__\n'
    "    self._init_gcs_client()\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 1033, in _init_gcs_client\n'
    "    raise RuntimeError(\n"
    "RuntimeError: Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/node.py", line 996, in _init_gcs_client\n'
    "    client = GcsClient(\n"
    "             ^^^^^^^^^^\n"
    '  File "python/ray/_raylet.pyx", line 3198, in ray._raylet.GcsClient.__cinit__\n'
    '  File "python/ray/includes/gcs_client.pxi", line 78, in ray._raylet.InnerGcsClient.standalone\n'
    '  File "python/ray/includes/common.pxi", line 146, in ray._raylet.check_status_timeout_as_rpc_error\n'
    '  File "python/ray/includes/common.pxi", line 119, in ray._raylet.check_status\n'
    "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect. Ensure that the token for the cluster is available in a local file (e.g., ~/.ray/auth_token or via RAY_AUTH_TOKEN_PATH) or as the `RAY_AUTH_TOKEN` environment variable. To generate a token for local development, use `ray get-auth-token --generate` For remote clusters, ensure that the token is propagated to all nodes of the cluster when token authentication is enabled. For more information, see: https://docs.ray.io/en/latest/ray-security/token-auth.html\n"
    "\n"
)
