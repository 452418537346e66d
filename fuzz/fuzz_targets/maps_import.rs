//! The `/proc/PID/maps` importer: any text either imports or is refused
//! with an error naming a line; an import renders back to the same layout
//! and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmasim_server::mm::{SimConfig, Simulator};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sim = Simulator::new(SimConfig { pool_capacity: 4096, max_map_count: 512, ..SimConfig::default() });
    match sim.spawn_from_maps(text, None) {
        Ok(pid) => {
            let maps = sim.maps(pid).unwrap();
            // What was imported imports again to the same thing.
            let again = sim.spawn_from_maps(&maps.text, Some(maps.start_brk)).unwrap();
            assert_eq!(sim.maps(again).unwrap().entries, maps.entries);
        }
        Err(e) => assert!(e.to_string().starts_with("maps_text") || e.to_string().contains("max_map_count") || e.to_string().contains("exhausted"), "{e}"),
    }
});
