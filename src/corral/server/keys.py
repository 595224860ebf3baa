"""Where each record lives in the store. One place, so a layout change is one edit.

```
/apps/<ns>/<name>                      Application
/appversions/<ns>/<name>/<version:010> ApplicationSpec (immutable)
/instances/<id>                        Instance
/nodes/<name>                          Node
/nodes-alive/<name>                    lease id (attached to the node's lease)
/nodes-auth/<name>                     NodeCredential (issued at join; hashes, no secrets)
/tokens/<id>                           JoinToken (secret hashed)
/artifacts/<hex>                       artifact metadata (the blob is on disk)
/events/<time_ns:020>-<seq:08>         Event (index = the key's create_revision)
/eventmeta/pruned-through              highest event index retention deleted (decimal)
/deployments/<ns>/<app>/<service>/<id> Deployment
/jobs/<ns>/<app>/<job>                 JobState (the job controller's memory, counters)
/jobruns/<ns>/<app>/<job>/<number:010> JobRun
```
"""

from __future__ import annotations

__all__ = [
    "APPS", "APP_VERSIONS", "ARTIFACTS", "DEPLOYMENTS", "EVENTS", "EVENTS_PRUNED", "INSTANCES",
    "JOBS", "JOB_RUNS", "NODES", "NODES_ALIVE", "NODES_AUTH", "TOKENS", "app", "app_deployments",
    "app_job_runs", "app_job_states", "app_version", "app_versions", "artifact",
    "deployment", "event", "instance", "job_run", "job_runs", "job_state", "node",
    "node_alive", "node_auth", "token",
]

APPS = "/apps/"
APP_VERSIONS = "/appversions/"
INSTANCES = "/instances/"
NODES = "/nodes/"
NODES_ALIVE = "/nodes-alive/"
NODES_AUTH = "/nodes-auth/"
TOKENS = "/tokens/"
ARTIFACTS = "/artifacts/"
EVENTS = "/events/"
EVENTS_PRUNED = "/eventmeta/pruned-through"  # outside EVENTS: a range of events skips it
DEPLOYMENTS = "/deployments/"
JOBS = "/jobs/"
JOB_RUNS = "/jobruns/"


def app(namespace: str, name: str) -> str:
    return f"{APPS}{namespace}/{name}"


def app_versions(namespace: str, name: str) -> str:
    return f"{APP_VERSIONS}{namespace}/{name}/"


def app_version(namespace: str, name: str, version: int) -> str:
    return f"{app_versions(namespace, name)}{version:010d}"


def app_deployments(namespace: str, name: str) -> str:
    return f"{DEPLOYMENTS}{namespace}/{name}/"


def deployment(namespace: str, name: str, service: str, deployment_id: str) -> str:
    return f"{app_deployments(namespace, name)}{service}/{deployment_id}"


def app_job_states(namespace: str, name: str) -> str:
    return f"{JOBS}{namespace}/{name}/"


def job_state(namespace: str, app: str, job: str) -> str:
    return f"{app_job_states(namespace, app)}{job}"


def app_job_runs(namespace: str, name: str) -> str:
    return f"{JOB_RUNS}{namespace}/{name}/"


def job_runs(namespace: str, app: str, job: str) -> str:
    return f"{app_job_runs(namespace, app)}{job}/"


def job_run(namespace: str, app: str, job: str, number: int) -> str:
    return f"{job_runs(namespace, app, job)}{number:010d}"


def instance(instance_id: str) -> str:
    return f"{INSTANCES}{instance_id}"


def node(name: str) -> str:
    return f"{NODES}{name}"


def node_alive(name: str) -> str:
    return f"{NODES_ALIVE}{name}"


def node_auth(name: str) -> str:
    return f"{NODES_AUTH}{name}"


def token(token_id: str) -> str:
    return f"{TOKENS}{token_id}"


def artifact(hex_digest: str) -> str:
    return f"{ARTIFACTS}{hex_digest}"


def event(time_ns: int, seq: int) -> str:
    return f"{EVENTS}{time_ns:020d}-{seq:08d}"
