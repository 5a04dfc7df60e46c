//! Builds store entries in a loop, for the crash-safety test that SIGKILLs it at random
//! moments. Usage: `store-writer STORE FIRST COUNT`.

use std::{fs, path::PathBuf, process::ExitCode};

use kiln_store::{Derivation, Store};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(first), Some(count)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: store-writer STORE FIRST COUNT");
        return ExitCode::from(2);
    };
    let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) else {
        eprintln!("FIRST and COUNT are numbers");
        return ExitCode::from(2);
    };
    let store = match Store::open(PathBuf::from(root)) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("cannot open the store: {err}");
            return ExitCode::from(1);
        }
    };
    for tag in first..first + count {
        let mut drv = Derivation::new("crash-test");
        drv.setting("tag", tag.to_string());
        let built = store.build(
            &drv,
            &format!("entry-{tag}"),
            || {},
            |out| {
                for file in 0..16u64 {
                    let dir = out.join(format!("d{}", file % 4));
                    fs::create_dir_all(&dir)?;
                    let content: Vec<u8> = (0..32 * 1024u64).map(|i| (i * 31 + tag * 7 + file) as u8).collect();
                    fs::write(dir.join(format!("f{file}")), content)?;
                }
                Ok(())
            },
        );
        if let Err(err) = built {
            eprintln!("build {tag} failed: {err}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
