//! Colony's no_std worker over embassy-net TCP, for microcontrollers.
#![no_std]
