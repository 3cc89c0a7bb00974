"""StartRecovery through the official Python SDK over TLS.

The backup stub starts the recovery, the SDK's own operation waiter waits
for it, and a polling loop over the SDK's OperationService client checks
that StartRecoveryMetadata progress never moves backwards and reaches 100.
"""

import os
import subprocess
import time

import grpc
import yandexcloud
from yandex.cloud.backup.v1 import backup_service_pb2, backup_service_pb2_grpc
from yandex.cloud.backup.v1 import policy_pb2, policy_service_pb2, policy_service_pb2_grpc
from yandex.cloud.backup.v1 import resource_service_pb2, resource_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2, operation_service_pb2_grpc

from test_sdk import backup_channel

INSTANCE = "sdk-vm-1"
FOLDER = "folder-sdk"


def make_ext4_image(folder):
    tree = folder / "tree"
    (tree / "etc").mkdir(parents=True)
    for i in range(60):
        (tree / "etc" / f"file-{i}.conf").write_text(f"setting {i}\n" * (200 + i))
    (tree / "random.bin").write_bytes(os.urandom(3 << 20))
    image = folder / "vda.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "48M"], check=True)
    return image


def policy_settings():
    interval = policy_pb2.PolicySettings.Interval
    retries = policy_pb2.PolicySettings.RetriesConfiguration(
        enabled=True, interval=interval(type=interval.MINUTES, count=5), max_attempts=3)
    return policy_pb2.PolicySettings(
        compression=policy_pb2.PolicySettings.NORMAL,
        format=policy_pb2.AUTO,
        reattempts=retries,
        vm_snapshot_reattempts=retries,
        splitting=policy_pb2.PolicySettings.Splitting(size=1 << 40),
        vss=policy_pb2.PolicySettings.VolumeShadowCopyServiceSettings(
            enabled=False, provider=policy_pb2.PolicySettings.VolumeShadowCopyServiceSettings.NATIVE),
        performance_window=policy_pb2.PolicySettings.PerformanceWindow(enabled=False),
        cbt=policy_pb2.PolicySettings.USE_IF_ENABLED,
        retention=policy_pb2.PolicySettings.Retention(rules=[
            policy_pb2.PolicySettings.Retention.RetentionRule(
                backup_set=[policy_pb2.PolicySettings.DAILY],
                max_count=7),
        ]),
        scheduling=policy_pb2.PolicySettings.Scheduling(
            enabled=True,
            scheme=policy_pb2.PolicySettings.Scheduling.ALWAYS_INCREMENTAL,
            weekly_backup_day=policy_pb2.PolicySettings.MONDAY,
            rand_max_delay=interval(type=interval.MINUTES, count=30),
            backup_sets=[policy_pb2.PolicySettings.Scheduling.BackupSet(
                type=policy_pb2.PolicySettings.Scheduling.BackupSet.TYPE_AUTO,
                time=policy_pb2.PolicySettings.Scheduling.BackupSet.Time(
                    type=policy_pb2.PolicySettings.DAILY,
                    repeat_at=[policy_pb2.PolicySettings.TimeOfDay(hour=3)]),
            )],
        ),
    )


def wait_online(channel):
    resources = resource_service_pb2_grpc.ResourceServiceStub(channel)
    for _ in range(100):
        try:
            resource = resources.Get(resource_service_pb2.GetResourceRequest(compute_instance_id=INSTANCE)).resource
            if resource.online:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"instance {INSTANCE} did not come online")


def test_start_recovery_through_sdk_waiter(start_server, tmp_path):
    image = make_ext4_image(tmp_path)
    config = (
        f'[[instances]]\ncompute_instance_id = "{INSTANCE}"\nfolder_id = "{FOLDER}"\n'
        f'disks = [{{ name = "vda", path = "{image}" }}]\n'
    )
    server = start_server(tls=True, config=config)
    sdk = yandexcloud.SDK(iam_token="any-token", endpoint=server.address, root_certificates=server.cert_pem)
    channel = backup_channel(server, "any-token")
    wait_online(channel)

    policies = policy_service_pb2_grpc.PolicyServiceStub(channel)
    created = policies.Create(policy_service_pb2.CreatePolicyRequest(
        folder_id=FOLDER, name="sdk-nightly", settings=policy_settings()))
    created_meta = policy_service_pb2.CreatePolicyMetadata()
    assert created.metadata.Unpack(created_meta)
    policy_id = created_meta.policy_id
    sdk.wait_operation_and_get_result(
        policies.Apply(policy_service_pb2.ApplyPolicyRequest(policy_id=policy_id, compute_instance_id=INSTANCE)),
        timeout=60)
    executed = policies.Execute(policy_service_pb2.ExecuteRequest(policy_id=policy_id, compute_instance_id=INSTANCE))
    sdk.wait_operation_and_get_result(executed, meta_type=policy_service_pb2.ExecuteMetadata, timeout=120)

    backups = backup_service_pb2_grpc.BackupServiceStub(channel)
    listed = backups.List(backup_service_pb2.ListBackupsRequest(compute_instance_id=INSTANCE))
    assert len(listed.backups) == 1
    backup_id = listed.backups[0].id
    original = image.read_bytes()

    # Damage the disk, then recover it.
    with open(image, "r+b") as disk:
        disk.seek(8 << 20)
        disk.write(os.urandom(1 << 20))
    assert image.read_bytes() != original

    operation = backups.StartRecovery(
        backup_service_pb2.StartRecoveryRequest(compute_instance_id=INSTANCE, backup_id=backup_id))
    operations = sdk.client(operation_service_pb2_grpc.OperationServiceStub)
    progress = []
    while True:
        polled = operations.Get(operation_service_pb2.GetOperationRequest(operation_id=operation.id))
        meta = backup_service_pb2.StartRecoveryMetadata()
        assert polled.metadata.Unpack(meta), polled.metadata.type_url
        assert meta.src_backup_id == backup_id
        assert meta.dst_compute_instance_id == INSTANCE
        progress.append(meta.progress_percentage)
        if polled.done:
            break
        time.sleep(0.05)
    assert progress == sorted(progress), progress
    assert progress[-1] == 100.0

    result = sdk.wait_operation_and_get_result(
        operation, meta_type=backup_service_pb2.StartRecoveryMetadata, timeout=120)
    assert result.meta.src_backup_id == backup_id
    assert image.read_bytes() == original
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
