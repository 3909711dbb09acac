"""Stub of @rules_cc//cc:defs.bzl for offline `bazel query`.

Bazel 4's @bazel_tools loads these names while `rdeps(//..., ...)` walks its tool targets; the real
rules_cc is downloaded from GitHub. Forwarding to the native rules keeps every target and edge that
query sees; nothing here is ever built.
"""

def cc_binary(**kwargs):
    native.cc_binary(**kwargs)

def cc_import(**kwargs):
    native.cc_import(**kwargs)

def cc_library(**kwargs):
    native.cc_library(**kwargs)

def cc_proto_library(**kwargs):
    native.cc_proto_library(**kwargs)

def cc_test(**kwargs):
    native.cc_test(**kwargs)

def cc_toolchain(**kwargs):
    native.cc_toolchain(**kwargs)

def cc_toolchain_suite(**kwargs):
    native.cc_toolchain_suite(**kwargs)

def objc_library(**kwargs):
    native.objc_library(**kwargs)
