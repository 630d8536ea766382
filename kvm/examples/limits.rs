//! Prints the memslot limits of this machine's KVM: `cargo run -p memslots-kvm --example limits`.
fn main() {
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => return println!("no usable /dev/kvm: {e}"),
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    println!(
        "{:#x?}",
        memslots_kvm::probe_limits(&kvm, &vm).expect("probing")
    );
}
