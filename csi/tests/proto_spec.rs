//! `csi/proto/csi.proto` must stay wire-compatible with the CSI v1.12 spec: every service
//! method, message, field (number, type, label, oneof) and enum value it declares must exist
//! identically in the upstream `csi.proto`. The upstream file lives in `../shared/spec/` beside
//! the repository when that folder is present; without it the comparison is skipped (and says
//! so), and only the local file's own invariants are checked.

use std::path::{Path, PathBuf};

use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto,
};

fn compile(dir: &Path, file: &str) -> FileDescriptorProto {
    let set = protox::compile([file], [dir]).unwrap_or_else(|e| panic!("compile {file}: {e}"));
    set.file
        .into_iter()
        .find(|f| f.name() == file)
        .expect("the compiled file")
}

fn ours() -> FileDescriptorProto {
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("proto"),
        "csi.proto",
    )
}

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/csi-v1.12.0.proto")
}

/// The item of `spec` named like `ours` (`name` reads a descriptor's name); panics saying
/// that `what` is not in the spec when there is none.
fn counterpart<'a, T>(spec: &'a [T], ours: &T, name: fn(&T) -> &str, what: &str) -> &'a T {
    spec.iter()
        .find(|theirs| name(theirs) == name(ours))
        .unwrap_or_else(|| panic!("{what} is not in the spec"))
}

fn compare_enum(path: &str, ours: &EnumDescriptorProto, spec: &EnumDescriptorProto) {
    for value in &ours.value {
        let what = format!("{path}.{}", value.name());
        let theirs = counterpart(&spec.value, value, EnumValueDescriptorProto::name, &what);
        assert_eq!(value.number(), theirs.number(), "{path}.{}", value.name());
    }
}

fn compare_message(path: &str, ours: &DescriptorProto, spec: &DescriptorProto) {
    let oneof_name = |m: &DescriptorProto, index: Option<i32>| {
        index.map(|i| m.oneof_decl[i as usize].name().to_string())
    };
    for field in &ours.field {
        let where_ = format!("{path}.{}", field.name());
        let what = format!("field {where_}");
        let theirs = counterpart(&spec.field, field, FieldDescriptorProto::name, &what);
        assert_eq!(field.number(), theirs.number(), "{where_}: number");
        assert_eq!(field.r#type(), theirs.r#type(), "{where_}: type");
        assert_eq!(field.type_name(), theirs.type_name(), "{where_}: type name");
        assert_eq!(field.label(), theirs.label(), "{where_}: label");
        assert_eq!(
            oneof_name(ours, field.oneof_index),
            oneof_name(spec, theirs.oneof_index),
            "{where_}: oneof"
        );
    }
    for nested in &ours.nested_type {
        let what = format!("{path}.{}", nested.name());
        let theirs = counterpart(&spec.nested_type, nested, DescriptorProto::name, &what);
        compare_message(&what, nested, theirs);
    }
    for e in &ours.enum_type {
        let what = format!("{path}.{}", e.name());
        let theirs = counterpart(&spec.enum_type, e, EnumDescriptorProto::name, &what);
        compare_enum(&what, e, theirs);
    }
}

#[test]
fn local_proto_is_package_csi_v1_with_identity_and_node() {
    let file = ours();
    assert_eq!(file.package(), "csi.v1");
    let services: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
    assert_eq!(services, ["Identity", "Node"]);
}

#[test]
fn local_proto_matches_the_csi_v1_12_spec() {
    let spec_file = spec_path();
    if !spec_file.exists() {
        println!(
            "skipped: {} is not present (it lives in ../shared/spec beside the repository)",
            spec_file.display()
        );
        return;
    }
    let spec = compile(spec_file.parent().expect("spec dir"), "csi-v1.12.0.proto");
    let ours = ours();
    assert_eq!(ours.package(), spec.package());
    for service in &ours.service {
        let what = format!("service {}", service.name());
        let theirs = counterpart(&spec.service, service, ServiceDescriptorProto::name, &what);
        for method in &service.method {
            let what = format!("{}.{}", service.name(), method.name());
            let m = counterpart(&theirs.method, method, MethodDescriptorProto::name, &what);
            assert_eq!(method.input_type(), m.input_type(), "{}", method.name());
            assert_eq!(method.output_type(), m.output_type(), "{}", method.name());
            assert_eq!(method.client_streaming(), m.client_streaming());
            assert_eq!(method.server_streaming(), m.server_streaming());
        }
    }
    for message in &ours.message_type {
        let what = format!("message {}", message.name());
        let theirs = counterpart(&spec.message_type, message, DescriptorProto::name, &what);
        compare_message(message.name(), message, theirs);
        // Every field the spec declares for the message is in ours too (no silently dropped
        // field).
        for field in &theirs.field {
            assert!(
                message.field.iter().any(|f| f.name() == field.name()),
                "{}.{} from the spec is missing locally",
                message.name(),
                field.name()
            );
        }
    }
    println!(
        "compared {} messages and {} services with {}",
        ours.message_type.len(),
        ours.service.len(),
        spec_file.display()
    );
}
