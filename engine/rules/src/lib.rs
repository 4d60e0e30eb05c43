//! Signal-log parser, phrase features and saber right-of-way decisions.
