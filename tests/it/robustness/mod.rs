//! Bad and hostile input, fuzzing, kills and locks, integrity of what is written.

mod torch_file;
mod bad_input;
mod hostile;
mod fuzz;
mod faults;
mod integrity;
