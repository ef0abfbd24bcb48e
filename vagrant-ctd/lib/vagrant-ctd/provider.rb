# frozen_string_literal: true

require "vagrant"
require_relative "client"

module VagrantPlugins
  module Ctd
    # The provider: the machine's state and address come from ctd's instance view.
    class Provider < Vagrant.plugin("2", :provider)
      STATES = { "running" => :running, "stopped" => :stopped, "suspended" => :suspended }.freeze

      # host bind mounts the ctd synced folder asked for, passed at create
      attr_accessor :pending_mounts

      def self.usable?(raise_error = false)
        true
      end

      def initialize(machine)
        super
        @machine = machine
        @pending_mounts = []
      end

      def client
        c = @machine.provider_config
        Client.new(socket: c.socket, remote: c.remote, token: c.token, fingerprint: c.fingerprint)
      end

      def action(name)
        require_relative "action"
        method = "action_#{name}"
        Action.respond_to?(method) ? Action.send(method) : nil
      end

      def instance
        return nil if @machine.id.nil?
        client.get("/1.0/instances/#{@machine.id}")["instance"]
      rescue Client::NotFound
        @machine.id = nil  # gone from ctd (destroyed behind Vagrant's back)
        nil
      end

      def state
        inst = instance
        id = inst.nil? ? :not_created : STATES.fetch(inst["state"], inst["state"].to_s.to_sym)
        short = id.to_s.tr("_", " ")
        long = inst.nil? ? "The instance is not created. Run `vagrant up` to create it." : "ctd #{inst["type"]} #{@machine.id} is #{short}."
        Vagrant::MachineState.new(id, short, long)
      end

      # Vagrant ssh's straight to the instance's first IPv4 address (port 22).
      def ssh_info
        inst = instance
        return nil if inst.nil? || inst["state"] != "running"
        addr = (inst["nics"] || []).flat_map { |n| n["addresses"] || [] }.find { |a| !a.include?(":") }
        raise CtdError, "#{@machine.id} has no IPv4 address to ssh to: give it a network (private_network or ctd.network)" unless addr
        { host: addr.split("/").first, port: 22 }
      end

      def to_s
        id = @machine.id ? " (#{@machine.id})" : ""
        "ctd#{id}"
      end
    end
  end
end
