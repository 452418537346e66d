//! The engine's modes as `clap` value enums, so that `vmasim-server` parses
//! `--vma-cache`, `--fault-lock` and `--maps-reader` straight into
//! [`CachePolicy`], [`FaultLockMode`] and [`MapsReader`] instead of into
//! mirror enums of its own. The flag values are the modes' `as_str` names
//! (the ones metrics and `Stats` report), so a name is written once, in
//! the engine. Here, outside `mm/`, because the engine knows nothing of
//! command lines.

use crate::mm::{CachePolicy, FaultLockMode, MapsReader};
use clap::builder::PossibleValue;

macro_rules! value_enum {
    ($($ty:ident: [$($v:ident),*];)*) => {$(
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$v),*]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(PossibleValue::new(self.as_str()))
            }
        }
    )*};
}

value_enum! {
    CachePolicy: [Typesafe, Rcu];
    FaultLockMode: [PerVma, MmapLock];
    MapsReader: [PerVma, MmapLock];
}
