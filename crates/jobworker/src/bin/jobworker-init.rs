//! A stand-alone init program for a [`jobworker::Worker`] whose host program cannot run the init
//! itself (the library's own tests use it: a test harness owns its `main`).

fn main() {
    jobworker::init::run_if_requested();
    eprintln!("jobworker-init: this program is started by the jobworker library as a job's init");
    std::process::exit(2);
}
