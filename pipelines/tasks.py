"""What every task of LinkedOut's pipelines gets on a cluster: image, volume, secrets, caching, GPUs.

Set at compile time (KFP 2.17 takes these as constants)::

    image                the project's CPU image, or its GPU image for GPU steps (components.images)
    caching              off for every task: large data moves as locations (a path on the work
                         volume, an s3:// store) whose content KFP's cache key cannot see; what is
                         reused is decided by the stage functions' fingerprints
    work volume          the PVC named by the `work_pvc` parameter, mounted at /work (WORKDIR lives there)
    S3 credentials       the Secret linkedout-s3 (manifests/secrets) as AWS_* variables, optional
    retries              extraction shards 3, training 2, export and deploy 2 (with backoff)
    CPU / memory         requests and limits per kind of step (the constants below)
    LINKEDOUT_LOG_LEVEL  INFO: the steps log like the CLI, with the step's name in each line

Pipeline parameters (set per run)::

    accelerator          the GPU resource type of GPU steps (set_accelerator_type)
    extract_gpus, train_gpus   GPUs per extraction / training task (set_accelerator_limit)
    gpu_node_selector    node selector of GPU steps, a dict (kfp-kubernetes add_node_selector_json)
    gpu_tolerations      tolerations of GPU steps, a list of dicts (add_toleration_json)
    work_pvc             the work volume's PVC (mount_pvc)
"""

from __future__ import annotations

from typing import Any

from kfp import kubernetes

from components.images import Images

WORK_MOUNT = "/work"
S3_SECRET = "linkedout-s3"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
REDIS_SECRET = "linkedout-redis"

#: (cpu request, cpu limit, memory request, memory limit) per kind of step.
LIGHT = ("1", "2", "2G", "8G")
MEDIUM = ("4", "8", "16G", "32G")
GPU_EXTRACT = ("8", "16", "64G", "128G")
GPU_TRAIN = ("16", "32", "128G", "256G")

H100_NODE_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def on_cpu(task: Any, images: Images, work_pvc: Any, resources: tuple[str, str, str, str] = LIGHT, *,
           name: str | None = None, redis: bool = False) -> Any:
    """The settings of every task; ``redis``: also the Redis password (steps that write Feast's online store)."""
    task.set_caching_options(False)
    task.set_container_image(images.cpu)
    task.set_env_variable("LINKEDOUT_LOG_LEVEL", "INFO")
    cpu, cpu_max, mem, mem_max = resources
    task.set_cpu_request(cpu).set_cpu_limit(cpu_max).set_memory_request(mem).set_memory_limit(mem_max)
    kubernetes.mount_pvc(task, pvc_name=work_pvc, mount_path=WORK_MOUNT)
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_KEYS}, optional=True)
    if redis:
        kubernetes.use_secret_as_env(task, secret_name=REDIS_SECRET, secret_key_to_env={"REDIS_PASSWORD": "REDIS_PASSWORD"},
                                     optional=True)
    if name:
        task.set_display_name(name)
    return task


def on_gpus(task: Any, images: Images, work_pvc: Any, *, accelerator: Any, count: Any, node_selector: Any,
            tolerations: Any, resources: tuple[str, str, str, str], name: str | None = None,
            shm: str | None = None) -> Any:
    """:func:`on_cpu` with the GPU image, ``count`` GPUs of type ``accelerator`` on the nodes matching
    ``node_selector`` and tolerating ``tolerations``; ``shm``: a memory-backed /dev/shm of that size (NCCL)."""
    on_cpu(task, images, work_pvc, resources, name=name)
    task.set_container_image(images.gpu)
    task.set_accelerator_type(accelerator).set_accelerator_limit(count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    if shm:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=shm)
    return task
