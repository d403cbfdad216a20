//! `csi/proto/csi.proto` must stay wire-compatible with the CSI v1.12 spec: every service
//! method, message, field (number, type, label, oneof) and enum value it declares must exist
//! identically in the upstream `csi.proto`. The upstream file lives in `../shared/spec/` beside
//! the repository when that folder is present; without it the comparison is skipped (and says
//! so), and only the local file's own invariants are checked.

use std::path::{Path, PathBuf};

use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};

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

fn compare_enum(path: &str, ours: &EnumDescriptorProto, spec: &EnumDescriptorProto) {
    for value in &ours.value {
        let theirs = spec
            .value
            .iter()
            .find(|v| v.name() == value.name())
            .unwrap_or_else(|| panic!("{path}.{} is not in the spec", value.name()));
        assert_eq!(value.number(), theirs.number(), "{path}.{}", value.name());
    }
}

fn compare_message(path: &str, ours: &DescriptorProto, spec: &DescriptorProto) {
    let oneof_name = |m: &DescriptorProto, index: Option<i32>| {
        index.map(|i| m.oneof_decl[i as usize].name().to_string())
    };
    for field in &ours.field {
        let theirs = spec
            .field
            .iter()
            .find(|f| f.name() == field.name())
            .unwrap_or_else(|| panic!("field {path}.{} is not in the spec", field.name()));
        let where_ = format!("{path}.{}", field.name());
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
        let theirs = spec
            .nested_type
            .iter()
            .find(|m| m.name() == nested.name())
            .unwrap_or_else(|| panic!("{path}.{} is not in the spec", nested.name()));
        compare_message(&format!("{path}.{}", nested.name()), nested, theirs);
    }
    for e in &ours.enum_type {
        let theirs = spec
            .enum_type
            .iter()
            .find(|x| x.name() == e.name())
            .unwrap_or_else(|| panic!("{path}.{} is not in the spec", e.name()));
        compare_enum(&format!("{path}.{}", e.name()), e, theirs);
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
        let theirs = spec
            .service
            .iter()
            .find(|s| s.name() == service.name())
            .unwrap_or_else(|| panic!("service {} is not in the spec", service.name()));
        for method in &service.method {
            let m = theirs
                .method
                .iter()
                .find(|m| m.name() == method.name())
                .unwrap_or_else(|| {
                    panic!("{}.{} is not in the spec", service.name(), method.name())
                });
            assert_eq!(method.input_type(), m.input_type(), "{}", method.name());
            assert_eq!(method.output_type(), m.output_type(), "{}", method.name());
            assert_eq!(method.client_streaming(), m.client_streaming());
            assert_eq!(method.server_streaming(), m.server_streaming());
        }
    }
    for message in &ours.message_type {
        let theirs = spec
            .message_type
            .iter()
            .find(|m| m.name() == message.name())
            .unwrap_or_else(|| panic!("message {} is not in the spec", message.name()));
        compare_message(message.name(), message, theirs);
    }
    // Every field of every message we declare is in ours too (no silently dropped field).
    for message in &ours.message_type {
        let theirs = spec
            .message_type
            .iter()
            .find(|m| m.name() == message.name())
            .expect("checked above");
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
