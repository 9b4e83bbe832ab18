"""wasmbus_testkit: test a wasmCloud capability provider the way a host runs it.

The Python counterpart of wasmCloud's Rust ``wasmcloud-test-util``, for providers of any
contract written in any language. Nothing is mocked: tests start real nats-servers, launch the
provider as a real child process with the HostData line on stdin, and talk to it over NATS with
validly signed invocations, link definitions, health checks and shutdown requests. What passes
here passes against a real host, and a provider's bug shows up as the host would see it.

One job per module:

* :mod:`~wasmbus_testkit.natsserver`, :mod:`~wasmbus_testkit.topologies` - nats-server: a single
  server, a JetStream cluster, a hub with leaf nodes; free loopback ports; cleaned up always.
* :mod:`~wasmbus_testkit.hostdata` - HostData in the OTP host's style or test mode.
* :mod:`~wasmbus_testkit.process` - start any provider command as a host does.
* :mod:`~wasmbus_testkit.fakehost` - the host's side of the protocol: links, health, shutdown.
* :mod:`~wasmbus_testkit.invoker` - sign and send invocations for any contract.
* :mod:`~wasmbus_testkit.keyvalue` - typed ``wasmcloud:keyvalue`` calls on top.
* :mod:`~wasmbus_testkit.faultproxy` - network faults: drop, cut, blackhole, stall, latency.
* :mod:`~wasmbus_testkit.waiting`, :mod:`~wasmbus_testkit.ports`, :mod:`~wasmbus_testkit.tools`,
  :mod:`~wasmbus_testkit.children`, :mod:`~wasmbus_testkit.threadloop` - the small helpers.
* :mod:`~wasmbus_testkit.pytest_plugin` - fixtures (``nats_server``, ``nats_cluster``,
  ``nats_leafnodes``, ``fault_proxy``, ``provider_factory``, ``fake_host_factory`` …). Importing
  this package does not import pytest; only the plugin does.
"""

from contract.nkeys import KeyPair
from wasmbus_testkit.children import kill_all_children
from wasmbus_testkit.fakehost import DEFAULT_LINK_PROBE, FakeHost, Launcher, LinkProbe
from wasmbus_testkit.faultproxy import FaultProxy, Mode
from wasmbus_testkit.hostdata import (
    HostKeys,
    HostStyle,
    build_host_data,
    link_definition,
    shutdown_request,
)
from wasmbus_testkit.invoker import InvocationError, Invoker
from wasmbus_testkit.keyvalue import KeyValueClient, KeyValueError, KeyValueHost
from wasmbus_testkit.natsserver import HOST, NatsServer
from wasmbus_testkit.ports import free_port, port_open
from wasmbus_testkit.process import ProviderProcess
from wasmbus_testkit.threadloop import ThreadLoop
from wasmbus_testkit.tools import find_nats_server, find_venv_tool
from wasmbus_testkit.topologies import NatsCluster, NatsLeafnodes
from wasmbus_testkit.waiting import flush_in_order, wait_for, wait_for_sync

__all__ = [
    "DEFAULT_LINK_PROBE",
    "HOST",
    "FakeHost",
    "FaultProxy",
    "HostKeys",
    "HostStyle",
    "InvocationError",
    "Invoker",
    "KeyPair",
    "KeyValueClient",
    "KeyValueError",
    "KeyValueHost",
    "Launcher",
    "LinkProbe",
    "Mode",
    "NatsCluster",
    "NatsLeafnodes",
    "NatsServer",
    "ProviderProcess",
    "ThreadLoop",
    "build_host_data",
    "find_nats_server",
    "find_venv_tool",
    "flush_in_order",
    "free_port",
    "kill_all_children",
    "link_definition",
    "port_open",
    "shutdown_request",
    "wait_for",
    "wait_for_sync",
]
