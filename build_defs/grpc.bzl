"""cc_grpc_library_system: .proto -> C++ messages + gRPC stubs with Debian's
/usr/bin/protoc and /usr/bin/grpc_cpp_plugin (no @com_google_protobuf needed)."""

def cc_grpc_library_system(name, srcs, proto_deps = [], deps = [], grpc = True,
                           static_name = None, **kwargs):
    """srcs: .proto files of this package; proto_deps: other .proto files they import
    (workspace-relative import paths); deps: cc deps for the imported protos' code.
    static_name: also emit a cc_library of that name linking Debian's .a archives."""
    bases = [s[:-len(".proto")] for s in srcs]
    hdrs = [b + ".pb.h" for b in bases]
    ccs = [b + ".pb.cc" for b in bases]
    plugin = ""
    if grpc:
        hdrs += [b + ".grpc.pb.h" for b in bases]
        ccs += [b + ".grpc.pb.cc" for b in bases]
        plugin = " --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin --grpc_out=$(GENDIR)"
    native.genrule(
        name = name + "_codegen",
        srcs = srcs + proto_deps,
        outs = hdrs + ccs,
        # --proto_path=. : import paths and generated #includes are workspace-relative
        # ("proto/kv.pb.h"); google/protobuf/*.proto come from /usr/include, which
        # /usr/bin/protoc searches by itself.
        cmd = "/usr/bin/protoc --proto_path=. --cpp_out=$(GENDIR)" + plugin +
              " " + " ".join(["$(location %s)" % s for s in srcs]),
        message = "protoc+grpc_cpp_plugin %s" % name,
    )
    native.cc_library(
        name = name,
        srcs = ccs,
        hdrs = hdrs,
        deps = deps + ["@system//:protobuf"] + (["@system//:grpc++"] if grpc else []),
        **kwargs
    )
    if static_name:
        native.cc_library(
            name = static_name,
            srcs = ccs,
            hdrs = hdrs,
            deps = deps + ["@system//:protobuf_static"] +
                   (["@system//:grpc++_static"] if grpc else []),
            **kwargs
        )
