"""A build manager for tests that serves the worker protocol the way Quay's does.

Quay's build manager is a grpcio server (a thread pool, grpcio's default options), and its
servicer behaves as this one does:

- Heartbeat and LogMessage are generators over the request stream: a reply is sent only
  after a request arrived, and grpcio sends the response headers with the first reply;
- the server's keepalive enforcement is grpcio's default (a ping without data sent in
  between is allowed once every 5 minutes; past 2 strikes the connection gets GOAWAY
  `too_many_pings`);
- a log line is answered with its sequence number; on one stream a sequence number not
  greater than the last is refused (success = false, sequence number 0);
- a second RegisterBuildJob is refused with INTERNAL "Build manager unable to start job".

It runs one build: the build pack names a context served over http by this process (the
file given with --context) and the given registry, repository, tags and token. Across
streams it stores a line once per sequence number (as buildman's manager does), so a
re-sent line is acknowledged without being stored again.

It prints what it sees as JSON lines on stdout, for the test to read:
  {"event": "listening", "port": N}
  {"event": "call", "rpc": name, "peer": "ipv4:127.0.0.1:PORT"}  (every call: the peer
      names the TCP connection, so a reconnect shows as a new peer)
  {"event": "register", "accepted": bool}
  {"event": "heartbeat", "reply": bool}
  {"event": "phase", "phase": "BUILDING", "sequence_number": N, "success": bool}
  {"event": "log", "stream": N, "sequence_number": N, "message": str, "stored": bool,
      "success": bool}
  {"event": "stream_end", "rpc": name, "stream": N, "peer": str, "broken": bool,
      "after_final_phase": bool}  (broken: the stream ended by an error or cancellation,
      not by the worker closing it)

Usage: manager.py --proto DIR --context FILE --registry HOST --token TOKEN
       --repository NS/NAME --tags a,b --register-token JWT [--max-connection-age-ms N]
"""

import argparse
import http.server
import itertools
import json
import secrets
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from grpc_tools import protoc

FINAL_PHASES = {"COMPLETE", "ERROR"}

_print_lock = threading.Lock()


def emit(**event):
    with _print_lock:
        print(json.dumps(event), flush=True)


def load_stubs(proto_dir):
    """Generates the Python stubs from buildman.proto, as Quay generates its own."""
    out = tempfile.mkdtemp(prefix="quay-manager-stubs-")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "buildman.proto",
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed on {proto_dir}/buildman.proto (exit {code})")
    sys.path.insert(0, out)
    import buildman_pb2
    import buildman_pb2_grpc

    return buildman_pb2, buildman_pb2_grpc


def serve_context(path):
    """Serves the context file at /context over http; returns its URL."""
    with open(path, "rb") as f:
        body = f.read()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/context":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/context"


def make_servicer(pb, pb_grpc, args, package_url):
    class Servicer(pb_grpc.BuildManagerServicer):
        def __init__(self):
            self.lock = threading.Lock()
            self.job_jwt = None
            self.phase = None
            self.stored = {}
            self.streams = itertools.count(1)

        def _call(self, rpc, context):
            emit(event="call", rpc=rpc, peer=context.peer())

        def _job_token_ok(self, token, context):
            if self.job_jwt is None or token != self.job_jwt:
                context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                context.set_details("Invalid build token: not this job's token")
                return False
            return True

        def _finished(self):
            with self.lock:
                return self.phase in FINAL_PHASES

        def Ping(self, request, context):
            self._call("Ping", context)
            return pb.PingReply(reply="pong")

        def RegisterBuildJob(self, request, context):
            self._call("RegisterBuildJob", context)
            if request.register_jwt != args.register_token:
                context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                context.set_details("Invalid build token: unknown registration token")
                emit(event="register", accepted=False)
                return pb.BuildPack()
            with self.lock:
                first = self.job_jwt is None
                if first:
                    self.job_jwt = "job-" + secrets.token_hex(16)
            emit(event="register", accepted=first)
            if not first:
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details("Build manager unable to start job")
                return pb.BuildPack()
            return pb.BuildPack(
                job_jwt=self.job_jwt,
                package_url=package_url,
                context="/",
                dockerfile_path="Dockerfile",
                repository=args.repository,
                registry=args.registry,
                pull_token=args.token,
                push_token=args.token,
                tag_names=args.tags.split(","),
            )

        def _stream(self, rpc, request_iterator, context, answer):
            """Answers each request of a stream as it arrives; records how it ended."""
            self._call(rpc, context)
            stream = next(self.streams)
            broken = True
            try:
                for request in request_iterator:
                    if not self._job_token_ok(request.job_jwt, context):
                        return
                    yield answer(stream, request)
                broken = False
            finally:
                emit(
                    event="stream_end",
                    rpc=rpc,
                    stream=stream,
                    peer=context.peer(),
                    broken=broken,
                    after_final_phase=self._finished(),
                )

        def Heartbeat(self, request_iterator, context):
            def answer(_stream, _request):
                reply = not self._finished()
                emit(event="heartbeat", reply=reply)
                return pb.HeartbeatResponse(reply=reply)

            return self._stream("Heartbeat", request_iterator, context, answer)

        def LogMessage(self, request_iterator, context):
            last = [None]

            def answer(stream, request):
                sequence = request.sequence_number
                if last[0] is not None and sequence <= last[0]:
                    emit(event="log", stream=stream, sequence_number=sequence,
                         message=request.log_message, stored=False, success=False)
                    return pb.LogMessageResponse(success=False)
                last[0] = sequence
                with self.lock:
                    stored = sequence not in self.stored
                    if stored:
                        self.stored[sequence] = request.log_message
                emit(event="log", stream=stream, sequence_number=sequence,
                     message=request.log_message, stored=stored, success=True)
                return pb.LogMessageResponse(success=True, sequence_number=sequence)

            return self._stream("LogMessage", request_iterator, context, answer)

        def SetPhase(self, request, context):
            self._call("SetPhase", context)
            if not self._job_token_ok(request.job_jwt, context):
                return pb.SetPhaseResponse()
            phase = pb.Phase.Name(request.phase)
            with self.lock:
                success = self.phase not in FINAL_PHASES
                if success:
                    self.phase = phase
            emit(event="phase", phase=phase, sequence_number=request.sequence_number,
                 success=success)
            return pb.SetPhaseResponse(success=success,
                                       sequence_number=request.sequence_number)

        def DetermineCachedTag(self, request, context):
            self._call("DetermineCachedTag", context)
            if not self._job_token_ok(request.job_jwt, context):
                return pb.CachedTag()
            return pb.CachedTag(CachedTag="")

    return Servicer()


def main():
    parser = argparse.ArgumentParser()
    for flag in ["--proto", "--context", "--registry", "--token", "--repository",
                 "--tags", "--register-token"]:
        parser.add_argument(flag, required=True)
    parser.add_argument("--max-connection-age-ms", type=int)
    args = parser.parse_args()

    pb, pb_grpc = load_stubs(args.proto)
    package_url = serve_context(args.context)
    # grpcio's defaults, keepalive enforcement included; only a connection age when asked
    # (the server then ends every connection with a GOAWAY after that long).
    options = []
    if args.max_connection_age_ms:
        options += [
            ("grpc.max_connection_age_ms", args.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", 1000),
        ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    pb_grpc.add_BuildManagerServicer_to_server(
        make_servicer(pb, pb_grpc, args, package_url), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit(event="listening", port=port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
