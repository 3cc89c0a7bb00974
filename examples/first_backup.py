"""A first backup and recovery against a Backstop server, with the
official Python SDK's generated stubs.

It creates a policy, applies it to an instance, backs the instance up,
damages the disk image, recovers it from the backup and shows the
recovery's progress. Run it against a server started with a local
instance, as the README's walkthrough describes.
"""

import argparse
import hashlib
import sys
import time

import grpc
from yandex.cloud.backup.v1 import backup_service_pb2 as backup_pb, backup_service_pb2_grpc as backup_grpc
from yandex.cloud.backup.v1 import policy_pb2, policy_service_pb2 as policy_pb, policy_service_pb2_grpc as policy_grpc
from yandex.cloud.backup.v1 import resource_service_pb2 as resource_pb, resource_service_pb2_grpc as resource_grpc
from yandex.cloud.operation import operation_service_pb2 as op_pb, operation_service_pb2_grpc as op_grpc


def settings():
    """Return settings of a nightly, always-incremental policy kept for 14 days."""
    s = policy_pb2.PolicySettings
    retries = s.RetriesConfiguration(enabled=True, interval=s.Interval(type=s.Interval.MINUTES, count=5),
                                     max_attempts=3)
    return s(
        compression=s.NORMAL,
        format=policy_pb2.AUTO,
        reattempts=retries,
        vm_snapshot_reattempts=retries,
        splitting=s.Splitting(size=1 << 40),
        vss=s.VolumeShadowCopyServiceSettings(enabled=False, provider=s.VolumeShadowCopyServiceSettings.NATIVE),
        performance_window=s.PerformanceWindow(enabled=False),
        cbt=s.USE_IF_ENABLED,
        retention=s.Retention(rules=[s.Retention.RetentionRule(
            backup_set=[s.DAILY], max_age=s.Interval(type=s.Interval.DAYS, count=14))]),
        scheduling=s.Scheduling(
            enabled=True,
            scheme=s.Scheduling.ALWAYS_INCREMENTAL,
            weekly_backup_day=s.MONDAY,
            rand_max_delay=s.Interval(type=s.Interval.MINUTES, count=30),
            backup_sets=[s.Scheduling.BackupSet(
                type=s.Scheduling.BackupSet.TYPE_AUTO,
                time=s.Scheduling.BackupSet.Time(type=s.DAILY, repeat_at=[s.TimeOfDay(hour=3)]))],
        ),
    )


def wait(operations, operation, metadata_type, label):
    """Polls an operation until it is done, printing its progress."""
    last = None
    while True:
        operation = operations.Get(op_pb.GetOperationRequest(operation_id=operation.id))
        metadata = metadata_type()
        operation.metadata.Unpack(metadata)
        progress = getattr(metadata, "progress_percentage", None)
        if progress is not None and progress != last:
            last = progress
            print(f"  {label}: {last:5.1f}%")
        if operation.done:
            break
        time.sleep(0.2)
    if operation.HasField("error"):
        sys.exit(f"{label} failed: {operation.error.message} (code {operation.error.code})")
    return operation


def digest(path):
    with open(path, "rb") as image:
        return hashlib.sha256(image.read()).hexdigest()[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:9000", help="server address, host:port")
    parser.add_argument("--folder", default="demo-folder", help="folder of the instance")
    parser.add_argument("--instance", default="demo-vm", help="compute_instance_id of the local instance")
    parser.add_argument("--image", required=True, help="disk image of the instance, to damage and recover")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.endpoint)
    policies = policy_grpc.PolicyServiceStub(channel)
    backups = backup_grpc.BackupServiceStub(channel)
    resources = resource_grpc.ResourceServiceStub(channel)
    operations = op_grpc.OperationServiceStub(channel)

    for _ in range(100):
        resource = resources.Get(resource_pb.GetResourceRequest(compute_instance_id=args.instance)).resource
        if resource.online:
            break
        time.sleep(0.1)
    print(f"instance {args.instance} is online")

    created = policies.Create(policy_pb.CreatePolicyRequest(
        folder_id=args.folder, name=f"nightly-{int(time.time())}", settings=settings()))
    meta = policy_pb.CreatePolicyMetadata()
    created.metadata.Unpack(meta)
    print(f"created policy {meta.policy_id}")
    wait(operations, policies.Apply(policy_pb.ApplyPolicyRequest(
        policy_id=meta.policy_id, compute_instance_id=args.instance)), policy_pb.ApplyPolicyMetadata, "apply")

    print("backing up")
    wait(operations, policies.Execute(policy_pb.ExecuteRequest(
        policy_id=meta.policy_id, compute_instance_id=args.instance)), policy_pb.ExecuteMetadata, "backup")
    backup = backups.List(backup_pb.ListBackupsRequest(compute_instance_id=args.instance)).backups[0]
    print(f"backup {backup.id}: {backup.original_data_size} bytes of disk, {backup.size} bytes stored")
    before = digest(args.image)

    with open(args.image, "r+b") as image:
        image.seek(1 << 20)
        image.write(b"damage " * 100000)
    print(f"damaged the image: sha256 {before} -> {digest(args.image)}")

    print("recovering")
    wait(operations, backups.StartRecovery(backup_pb.StartRecoveryRequest(
        compute_instance_id=args.instance, backup_id=backup.id)), backup_pb.StartRecoveryMetadata, "recovery")
    after = digest(args.image)
    print(f"recovered: sha256 {after} ({'identical to' if after == before else 'DIFFERENT from'} the backup)")
    return 0 if after == before else 1


if __name__ == "__main__":
    sys.exit(main())
