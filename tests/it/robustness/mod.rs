//! Bad and hostile input, fuzzing, kills and locks, integrity of what is written.

mod bad_input;
mod faults;
mod fuzz;
mod hostile;
mod integrity;
mod torch_file;
