//! placeholder until the redactor lands
