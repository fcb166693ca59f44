fn main() {
    println!("voxlb: object {} bytes", voxlb::object::EBPF_OBJECT.len());
}
