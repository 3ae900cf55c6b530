#!/bin/sh
expr "$1" + "$2"
