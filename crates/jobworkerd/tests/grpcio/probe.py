"""Drives jobworkerd's standard gRPC services with grpcio, over mutual TLS.

Run by tests/standard_services.rs. Prints one line per observation, flushed at once, so the test
can act between them:

    check "" SERVING
    check "jobworker.v1.JobWorker" SERVING
    v1alpha services: ...            (for each reflection version)
    v1alpha file jobworker/v1/jobworker.proto: package jobworker.v1, service JobWorker: Start, ...
    watch SERVING                    (the test now starts the server's shutdown)
    watch NOT_SERVING
    watch ended: OK

Exits non-zero, with the reason on stderr, on any failure, including a missing grpcio.
"""

import argparse
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2
except ImportError as error:
    sys.exit(
        f"grpcio is missing ({error}): "
        "pip install -r crates/jobworkerd/tests/grpcio/requirements.txt"
    )

# v1 and v1alpha carry the same messages; only the service name differs. grpcio-reflection
# ships v1alpha stubs, so v1 is called through a generic method with the same messages.
REFLECTION_METHODS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


def say(line):
    print(line, flush=True)


def reflect(channel, version, request):
    call = channel.stream_stream(
        REFLECTION_METHODS[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([request]), timeout=10))
    if len(responses) != 1:
        sys.exit(f"{version}: expected one reflection response, got {len(responses)}")
    response = responses[0]
    if response.HasField("error_response"):
        error = response.error_response
        sys.exit(f"{version}: reflection error {error.error_code}: {error.error_message}")
    return response


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="host:port, e.g. localhost:50051")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    with grpc.secure_channel(args.target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "jobworker.v1.JobWorker"]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            say(f'check "{service}" {status}')

        for version in REFLECTION_METHODS:
            listed = reflect(
                channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
            )
            names = sorted(s.name for s in listed.list_services_response.service)
            say(f"{version} services: {', '.join(names)}")
            found = reflect(
                channel,
                version,
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="jobworker.v1.JobWorker"
                ),
            )
            for encoded in found.file_descriptor_response.file_descriptor_proto:
                file = descriptor_pb2.FileDescriptorProto.FromString(encoded)
                for service in file.service:
                    methods = ", ".join(m.name for m in service.method)
                    say(
                        f"{version} file {file.name}: package {file.package}, "
                        f"service {service.name}: {methods}"
                    )

        # Watch reports the current status at once, then every change, until the server ends
        # the stream (at shutdown, once its jobs are stopped).
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        try:
            for reply in watch:
                say(f"watch {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
            say("watch ended: OK")
        except grpc.RpcError as error:
            say(f"watch ended: {error.code().name}")


if __name__ == "__main__":
    main()
